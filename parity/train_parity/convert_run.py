"""Carry a training run to the other backend: `python -m parity convert-run SRC_RUN DST_RUN`.

    python -m parity convert-run runs/tiny_jax runs/tiny_torch       # JAX run -> PyTorch run
    python -m parity convert-run runs/tiny_torch runs/tiny_jax        # and back
    python -m torch_meanflow.train --resume --set out_dir=runs/tiny_torch steps=2000
    python -m torch_meanflow.evaluate --run runs/tiny_torch

The direction follows the source run's config.json ("backend"). DST_RUN becomes a run
folder of the other trainer, which its `--resume`, `load_run` and evaluator accept:

- config.json: the same TrainConfig (same field names), model config and data facts, the
  other backend named;
- checkpoints/: one checkpoint at the source's step, in the other trainer's format, holding
  the weights, the EMA weights, AdamW's first and second moments (converted by the
  architecture's table, like the weights), the update count and the lr schedule's position,
  and the meta the trainer writes (step, data position, seed, its RNG rule, config);
- metrics.csv and loss.png of the source up to that step, so the curve continues;
- converted.json: where it came from (run, backend, checkpoint, step), the table (its
  architecture, name and a digest of its rules), the commit of this code, what carried over
  and what did not.

The data position is the step (`batch_at(dataset, seed, step, batch)` on both sides), so a
resumed run reads the batches the source would have read. The per-step randomness (noise,
times, class-dropout mask, dropout) cannot carry over: each trainer draws it from its own
framework's generator (JAX: fold_in(PRNGKey(seed), step); torch: a Generator seeded with
step_seed(seed, step)), both pure functions of (seed, step) with no stream state to convert.
The converted run therefore continues from the same step with the randomness its own
backend draws for that seed and step: statistically the same recipe, not the same numbers.
(Trainers given one `noise_fn`, as `parity.train_parity` does, continue exactly.)

Nothing is written unless everything reads and converts: a source that is no run folder, a
destination that exists and is not empty, a checkpoint that does not fit the run's config,
an architecture no conversion table fits, a damaged checkpoint are each an error naming the
problem (exit status 2). The folder is assembled under a temporary name beside DST_RUN and
renamed into place when complete.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace

from meanflow_common.checks import UnreadableCheckpointError
from meanflow_common.config_compare import check_checkpoint_config
from meanflow_common.train_cli import read_run_config, write_run_config
from meanflow_common.train_config import config_from_dict, model_config
from parity.convert import jax_to_torch

__all__ = ["ConvertRunError", "SourceRun", "CARRIED", "NOT_CARRIED", "read_source", "find_arch", "table_digest",
           "convert_run",
           "main"]

PROVENANCE = "converted.json"
CARRIED = ("weights", "EMA weights", "AdamW first and second moments", "update count (step)",
           "lr schedule position", "data position", "config", "metrics.csv and loss.png up to the step")
NOT_CARRIED = ("the per-step random streams (each trainer draws noise, times, class dropout and dropout from its "
               "own framework's generator as a function of (seed, step)); the converted run continues with its "
               "backend's draws for the same seed and step",
               "older checkpoints (only the converted one is written)",
               "TensorBoard event files")


class ConvertRunError(ValueError):
    """Bad input to convert-run; the message names the run, file or key and what is wrong."""


@dataclass
class SourceRun:
    """A run folder read for conversion: its config.json, TrainConfig, model config, data facts,
    backend side (`run_state.SIDES`), model, state and meta of the checkpoint `path`."""

    run_dir: str
    saved: dict
    cfg: object
    mc: object
    info: dict
    side: object
    model: object
    params: object
    state: object
    meta: dict
    path: str


def _sides():
    from parity.train_parity.run_state import SIDES

    return SIDES


def _enable_dtype(cfg) -> None:
    from jax_meanflow import x64

    x64.enable_for(cfg.dtype)


def read_source(run_dir: str, checkpoint: str | None = None) -> SourceRun:
    """The run in `run_dir` and its newest checkpoint (or `checkpoint`), read by its own backend."""
    if not os.path.isdir(run_dir):
        what = "a file" if os.path.exists(run_dir) else "not found"
        raise ConvertRunError(f"source {run_dir} is not a run folder ({what})")
    try:
        saved = read_run_config(run_dir)
        cfg = config_from_dict(saved)
        mc = model_config(cfg)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConvertRunError(f"source {run_dir} is not a run folder: {_text(err)}") from None
    sides = _sides()
    side = sides.get(saved.get("backend"))
    if side is None:
        raise ConvertRunError(f"source {run_dir}: config.json names backend {saved.get('backend')!r}; convert-run "
                              f"carries runs of {', '.join(sorted(sides))}")
    _enable_dtype(cfg)
    backend = side.backend
    info = dict(saved.get("data") or {})
    try:
        model, params = backend.make_model(cfg, info=info)
        state = backend.create_state(cfg, model, params)
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertRunError(f"source {run_dir}: its config.json does not build a model: {_text(err)}") from None
    if checkpoint is None:
        found = backend.list_checkpoints(os.path.join(run_dir, "checkpoints"))
        if not found:
            raise ConvertRunError(f"source {run_dir} holds no checkpoint (checkpoints/ is empty or absent)")
        path = found[-1][1]
    else:
        path = checkpoint
    try:
        state, meta = backend.restore_checkpoint(path, state)
        check_checkpoint_config(meta, cfg, path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        unreadable = isinstance(err, UnreadableCheckpointError) and checkpoint is None
        later = " (an older one may be picked with --checkpoint)" if unreadable else ""
        raise ConvertRunError(f"source {run_dir}: checkpoint {path} cannot be carried over{later}: "
                              f"{_text(err)}") from None
    return SourceRun(run_dir, saved, cfg, mc, info, side, model, params, state, meta, path)


def _text(err: BaseException) -> str:
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


def find_arch(jax_tree, torch_shapes, mc, arch=None):
    """The registered Arch whose table converts the JAX trainer's params tree `jax_tree`
    (NumPy) onto the torch model's `torch_shapes` ({name: shape}) exactly; `arch` (an Arch or
    name) checks that one alone. Chosen by fit, never by name."""
    from parity.archs.registry import get_arch, registered

    candidates = [get_arch(arch)] if arch is not None else list(registered().values())
    fits, why = [], {}
    for a in candidates:
        try:
            jax_to_torch(jax_tree, a.table, mc, template=torch_shapes)
        except Exception as err:  # noqa: BLE001 - a table of another network fails in its own way
            why[a.name] = _text(err).splitlines()[0][:160]
            continue
        fits.append(a)
    if not fits:
        detail = "; ".join(f"{n}: {w}" for n, w in why.items())
        raise ConvertRunError(f"no conversion table fits this run's network {type(mc).__name__} ({detail})")
    if len(fits) > 1:
        raise ConvertRunError(f"the tables of {', '.join(a.name for a in fits)} all fit this run's network; "
                              "name one with --arch")
    return fits[0]


def _check_destination(dst: str) -> None:
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise ConvertRunError(f"destination {dst} exists and is a file; refusing to overwrite it")
    if os.path.isdir(dst) and os.listdir(dst):
        raise ConvertRunError(f"destination {dst} exists and is not empty; refusing to overwrite anything in it")
    head = os.path.dirname(os.path.abspath(dst))
    while not os.path.exists(head):
        head = os.path.dirname(head)
    if not os.path.isdir(head) or not os.access(head, os.W_OK | os.X_OK):
        raise ConvertRunError(f"destination {dst} cannot be created: {head} is not a writable folder")


def _commit() -> dict:
    """The git commit of this code (and whether the tree had changes), when it is a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=10, check=True).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def table_digest(table, model_cfg) -> str:
    """sha256 (first 16 hex digits) of the table's rules for `model_cfg`: which table converted a run."""
    return hashlib.sha256(repr(tuple(table.rules_for(model_cfg))).encode()).hexdigest()[:16]


def _copy_metrics(src_dir: str, dst_dir: str, step: int) -> None:
    from meanflow_common.metrics import MetricsLogger

    src = os.path.join(src_dir, "metrics.csv")
    if os.path.isfile(src):
        shutil.copyfile(src, os.path.join(dst_dir, "metrics.csv"))
        MetricsLogger(dst_dir, resume_step=step).close()  # rows after the checkpoint's step dropped
    png = os.path.join(src_dir, "loss.png")
    if os.path.isfile(png):
        shutil.copyfile(png, os.path.join(dst_dir, "loss.png"))


def convert_run(src: str, dst: str, checkpoint: str | None = None, arch=None) -> dict:
    """Write DST as the other backend's run of the run in SRC (see the module doc); returns
    the provenance record written to DST/converted.json. ConvertRunError on bad input,
    before anything is written."""
    from meanflow_common.train_loop import World, checkpoint_meta

    _check_destination(dst)
    source = read_source(src, checkpoint)
    target = next(s for s in _sides().values() if s is not source.side)
    cfg = replace(source.cfg, out_dir=dst)
    backend = target.backend
    try:
        model, params = backend.make_model(cfg, info=source.info)
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertRunError(f"the {target.name} trainer cannot build this run's model: {_text(err)}") from None
    built, sides = {source.side.name: (source.model, source.params), target.name: (model, params)}, _sides()
    chosen = find_arch(sides["jax"].template(built["jax"][1]), sides["torch"].template(built["torch"][0]),
                       source.mc, arch)
    try:
        portable = source.side.export(source.state, chosen.table, source.mc)
        state = target.build(cfg, model, params, portable, chosen.table, source.mc)
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertRunError(f"source {src}: checkpoint {source.path} cannot be converted: {_text(err)}") from None
    record = {
        "converted_from": {"run": os.path.abspath(src), "backend": source.side.name,
                           "checkpoint": os.path.abspath(source.path), "step": portable.step},
        "backend": target.name,
        "table": {"arch": chosen.name, "table": chosen.table.name,
                  "rules_sha256": table_digest(chosen.table, source.mc)},
        "code": _commit(),
        "carried": list(CARRIED),
        "not_carried": list(NOT_CARRIED),
        "written_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    parent = os.path.dirname(os.path.abspath(dst))
    made = parent
    while not os.path.exists(os.path.dirname(made)):
        made = os.path.dirname(made)
    made = None if os.path.exists(made) else made  # the outermost folder this call creates
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(dst))}.", suffix=".part")
    try:
        meta = {**checkpoint_meta(backend, cfg, portable.step, World()), "converted_from": record["converted_from"]}
        backend.save_checkpoint(os.path.join(tmp, "checkpoints"), state, meta, max(cfg.keep_last, 1))
        write_run_config(replace(cfg, out_dir=tmp), target.name, source.mc, source.info, source.saved.get("world"))
        _fix_out_dir(tmp, dst)
        _copy_metrics(src, tmp, portable.step)
        with open(os.path.join(tmp, PROVENANCE), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        if os.path.isdir(dst):
            os.rmdir(dst)  # empty (checked above): the complete folder takes its place
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(made or tmp, ignore_errors=True)
        raise
    return record


def _fix_out_dir(tmp: str, dst: str) -> None:
    """config.json records the run's own folder (DST), not the temporary one it was written in."""
    path = os.path.join(tmp, "config.json")
    with open(path) as f:
        data = json.load(f)
    data["train"]["out_dir"] = dst
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity convert-run", description=__doc__.split("\n\n")[0])
    p.add_argument("src", metavar="SRC_RUN", help="a run folder of either trainer")
    p.add_argument("dst", metavar="DST_RUN", help="the run folder to write (absent or empty)")
    p.add_argument("--checkpoint", help="the source checkpoint to carry (default: its newest)")
    p.add_argument("--arch", help="the architecture whose table converts (default: the one that fits)")
    args = p.parse_args(argv)
    record = convert_run(args.src, args.dst, args.checkpoint, args.arch)
    src, to = record["converted_from"], record["backend"]
    steps = config_from_dict(read_run_config(args.dst)).steps
    more = str(steps) if steps > src["step"] else f"<more than {src['step']}>"
    print(f"converted: {args.src} ({src['backend']}, step {src['step']}) -> {args.dst} ({to} run, table "
          f"{record['table']['table']}); continue with: python -m {to}_meanflow.train --resume "
          f"--set out_dir={args.dst} steps={more}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
