"""The one command line of both trainers, and the run folder it writes.

`python -m jax_meanflow.train` and `python -m torch_meanflow.train` both call `run_cli`
with their own `train` function, so their flags are identical by construction:

    --preset NAME          start from TRAIN_PRESETS[NAME] (default: TrainConfig())
    --config FILE.json     then a JSON file (partial TrainConfig dict, or a run's config.json)
    --set FIELD=VALUE ...  then assignments by field name (optim./mf./model. prefixes optional)
    --resume | --overwrite continue the run in out_dir / replace it
    --no-progress          no progress bar
    --print-config         print the resolved config as JSON and exit

With --resume and neither --preset nor --config, the recipe is the saved run's
(config.json in out_dir) plus the --set assignments (e.g. steps=2000).

The run folder (`out_dir`) holds config.json (the resolved recipe, the model config and
the backend that wrote it), metrics.csv, loss.png and checkpoints/. A folder that already
holds a run is refused unless the run is resumed or explicitly overwritten.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from meanflow_common.config_compare import RESUMABLE, config_diffs
from meanflow_common.metrics import format_seconds
from meanflow_common.train_config import (
    TRAIN_PRESETS,
    TrainConfig,
    apply_assignments,
    config_from_dict,
    config_to_dict,
    load_config_file,
    model_config,
)

__all__ = [
    "RUN_FILES",
    "RunResult",
    "LoadedRun",
    "RunUsageError",
    "prepare_run_dir",
    "write_run_config",
    "check_out_dir",
    "check_resume_step",
    "read_run_config",
    "check_resume_compatible",
    "build_parser",
    "parse_config",
    "run_cli",
]


# ----------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------

# converted.json: written by `parity convert-run`; an overwritten run is no longer the converted one
RUN_FILES = ("config.json", "metrics.csv", "checkpoints", "loss.png", "tensorboard", "converted.json")


class RunUsageError(ValueError):
    """The command asks for something the run folder cannot give (an out_dir that is no
    writable folder, a resume to fewer steps than the checkpoint holds): a usage error,
    exit status 2, refused before anything in the folder changes."""


def check_out_dir(run_dir: str, what: str = "out_dir") -> None:
    """RunUsageError when `run_dir` cannot be a folder written by this process: it is a
    file, lies below a file, or its nearest existing folder cannot be written (read-only
    file system, no permission). `what` names it in the message."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunUsageError(f"{what} {run_dir} is a file, not a folder; pick another {what}")
    head = os.path.abspath(run_dir)
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head):
        raise RunUsageError(f"{what} {run_dir} cannot be created: {head} is a file, not a folder")
    if not os.access(head, os.W_OK | os.X_OK):
        raise RunUsageError(f"{what} {run_dir} cannot be written: {head} is read-only (or not writable by this "
                            "user)")


def check_resume_step(cfg: TrainConfig, checkpoint_step: int, path: str) -> None:
    """RunUsageError when --resume asks for fewer steps than the checkpoint already holds:
    there is nothing to train, and the run's recorded length must not shrink."""
    if cfg.steps < checkpoint_step:
        raise RunUsageError(f"--resume: steps={cfg.steps} is below the step of the checkpoint {path} "
                            f"({checkpoint_step}); nothing to train (give steps >= {checkpoint_step})")


def read_run_config(run_dir: str) -> dict:
    """The run folder's config.json: {"backend", "train": TrainConfig dict, "model": dict}."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} holds no run (no config.json)")
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the run folder's config is damaged") from err
    if not isinstance(data, Mapping) or not isinstance(data.get("train"), Mapping):
        raise ValueError(f"{path} is not a run config (a JSON object with a 'train' object)")
    return data


def check_resume_compatible(saved: Mapping, cfg: TrainConfig, backend: str) -> None:
    """Raise ValueError naming every difference that a resumed run cannot accept.

    Only the run length and the logging/checkpoint cadence may change on resume.
    """
    if saved.get("backend") != backend:
        raise ValueError(
            f"the run in {cfg.out_dir} was written by {saved.get('backend')!r}, not {backend!r}; resume it "
            f"with that backend, or carry it over: python -m parity convert-run {cfg.out_dir} NEW_RUN_DIR"
        )
    diffs = config_diffs(saved["train"], config_to_dict(cfg), ignore=RESUMABLE)
    if diffs:
        raise ValueError(f"cannot resume {cfg.out_dir}: the config differs from the saved run: {'; '.join(diffs)}")


def prepare_run_dir(cfg: TrainConfig, backend: str, model_cfg, resume: bool = False, overwrite: bool = False,
                    data_info: Optional[Mapping[str, Any]] = None,
                    world_info: Optional[Mapping[str, Any]] = None,
                    runtime_info: Optional[Mapping[str, Any]] = None) -> bool:
    """Make `cfg.out_dir` ready; returns True when an existing run is to be resumed.

    A folder holding a run (config.json, metrics or checkpoints) is refused unless
    `resume` (the saved config must be compatible) or `overwrite` (the run's files are
    deleted first). A fresh run writes config.json (with `data_info`, e.g. {"obs_dim": 4},
    the data facts a loader needs to rebuild the model, and `world_info`, e.g.
    {"processes": 2, "devices": 2}, where it ran, and `runtime_info`, what the framework ran
    with: versions, intra-op threads, XLA_FLAGS). Writes nothing when it refuses, and
    nothing on resume: config.json is rewritten (`write_run_config`) only once the
    checkpoint to resume from has been read and accepted, so a refused resume changes nothing.
    """
    if resume and overwrite:
        raise ValueError("give either resume or overwrite, not both")
    run_dir = cfg.out_dir
    present = [n for n in RUN_FILES if os.path.exists(os.path.join(run_dir, n))]
    if present and resume:
        check_resume_compatible(read_run_config(run_dir), cfg, backend)
        return True
    if present and not overwrite:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(present)}); pass --resume to continue it "
            "or --overwrite to replace it"
        )
    if resume:
        raise FileNotFoundError(f"--resume: {run_dir} holds no run to resume")
    for name in present:
        path = os.path.join(run_dir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(run_dir, exist_ok=True)
    write_run_config(cfg, backend, model_cfg, data_info, world_info, runtime_info)
    return False


def write_run_config(cfg: TrainConfig, backend: str, model_cfg, data_info=None, world_info=None,
                     runtime_info=None) -> None:
    """Write `<out_dir>/config.json` (through a temporary name: never half a file).

    runtime_info ("runtime", left out when None): what the framework ran with. It is a
    record, not part of the recipe: a resume does not compare it (a resumed segment
    rewrites it with its own)."""
    data = {"backend": backend, "train": config_to_dict(cfg), "model": dataclasses.asdict(model_cfg),
            "data": dict(data_info or {}), "world": dict(world_info or {"processes": 1, "devices": 1})}
    if runtime_info is not None:
        data["runtime"] = dict(runtime_info)
    path = os.path.join(cfg.out_dir, "config.json")
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)




@dataclass
class RunResult:
    """What `train(cfg)` returns (both backends).

    run_dir: the run folder; step: updates done at the end; losses: {step: loss} of the
    updates run in this call (the unweighted per-sample loss, batch mean); checkpoint: path
    of the last checkpoint written (or None); state: the backend's TrainState; model: the
    backend's model (JAX: the module or policy, with the params in state; torch: the
    nn.Module trained in place); metrics: the last update's metrics as floats (loss, v_loss,
    weighted_loss, grad_norm, lr; empty when no update ran); elapsed_s: seconds this call
    spent in the loop.
    """

    run_dir: str
    step: int
    losses: dict
    checkpoint: Optional[str]
    state: Any
    model: Any
    metrics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass
class LoadedRun:
    """What `load_run(run_dir)` returns (both backends): the recipe, the model, the state
    restored from `checkpoint` (after `step` updates) and `sample(cond, noise=None,
    num_steps=None, seed=0) -> np.ndarray` (see the backends' `make_sampler`)."""

    cfg: TrainConfig
    model: Any
    state: Any
    step: int
    checkpoint: str
    sample: Callable


# ----------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The argparse parser both entry points use."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train MeanFlow (or a baseline) on the built-in digits or reach task.",
        epilog=f"presets: {', '.join(TRAIN_PRESETS)}. Fields: see meanflow_common/train_config.py "
        "(TrainConfig, optim.* = OptimConfig, mf.* = MeanFlowConfig, model.* = DiTConfig / FlowerConfig).",
    )
    p.add_argument("--preset", help="start from this TRAIN_PRESETS entry")
    p.add_argument("--config", metavar="FILE", help="JSON config applied over the preset")
    p.add_argument("--set", dest="sets", metavar="FIELD=VALUE", nargs="+", action="extend", default=[],
                   help="override fields by name, e.g. --set steps=200 optim.lr=1e-3 model.depth=2")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in out_dir from its last checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="delete the run in out_dir and start afresh")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return p


def parse_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe (see the module doc for the order)."""
    if args.preset is not None and args.preset not in TRAIN_PRESETS:
        raise KeyError(f"unknown preset {args.preset!r}; available: {', '.join(TRAIN_PRESETS)}")
    cfg = TRAIN_PRESETS[args.preset] if args.preset else TrainConfig()
    if args.config:
        cfg = load_config_file(args.config, cfg)
    cfg = apply_assignments(cfg, args.sets)
    if args.resume and not args.preset and not args.config:
        saved = config_from_dict(read_run_config(cfg.out_dir))
        cfg = apply_assignments(dataclasses.replace(saved, out_dir=cfg.out_dir), args.sets)
    return cfg


def run_cli(train_fn: Callable[..., RunResult], backend: str, argv: Optional[Sequence[str]] = None,
            prog: Optional[str] = None, prepare: Optional[Callable[[TrainConfig], None]] = None) -> int:
    """Parse `argv`, run `train_fn(cfg, resume=, overwrite=, progress=)`, print a summary.

    prepare(cfg) runs before training (the JAX trainer enables float64 there). Returns
    the exit status: 0 done, 1 the run failed with a clear error (printed: a damaged
    checkpoint, a full disk, a non-finite loss), 2 bad flags or a request the run folder
    refuses (an out_dir that is a file or read-only, --resume to fewer steps).
    """
    parser = build_parser(prog or f"python -m {backend}_meanflow.train")
    args = parser.parse_args(argv)
    try:
        cfg = parse_config(args)
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        parser.error(_message(err))
    if args.print_config:
        print(json.dumps({"train": config_to_dict(cfg), "model": dataclasses.asdict(model_config(cfg))}, indent=2))
        return 0
    try:
        check_out_dir(cfg.out_dir)
    except RunUsageError as err:
        parser.error(str(err))
    if args.resume and os.path.isfile(os.path.join(cfg.out_dir, "config.json")):
        try:  # before the backend builds anything: a run of the other backend is named as such
            check_resume_compatible(read_run_config(cfg.out_dir), cfg, backend)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    if prepare is not None:
        prepare(cfg)
    try:
        result = train_fn(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    except RunUsageError as err:  # found once the run folder is read (e.g. fewer steps than its checkpoint)
        parser.error(str(err))
    except (FloatingPointError, OSError, KeyError, ValueError, TypeError) as err:
        # OSError: a checkpoint or log that cannot be written (disk full, ...), named by the writer
        print(f"error: {_message(err)}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # a torchrun rank other than 0: rank 0 reports
    print(done_line(result))
    return 0


def done_line(result: RunResult) -> str:
    """The summary printed at the end of a run: the last update's unweighted loss and v_loss
    (the adaptive-weighted loss the optimiser saw beside them) and the time the run took."""
    m = result.metrics
    if m:
        figures = f"last loss {m['loss']:.5g}, v_loss {m['v_loss']:.5g} (weighted loss {m['weighted_loss']:.5g})"
    else:
        figures = "no update ran"
    return (f"done: {result.step} steps in {result.run_dir} in {format_seconds(result.elapsed_s)} ({figures}); "
            f"checkpoint {result.checkpoint}")


def _message(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
