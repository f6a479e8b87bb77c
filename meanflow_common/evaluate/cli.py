"""The one command line of both evaluators: `python -m {jax,torch}_meanflow.evaluate`.

Each backend passes its own `load_run(run_dir, checkpoint=None, use_ema=True)` (the
trainers' loader: a `LoadedRun` with `sample(cond, noise=None, num_steps=None)` returning
NumPy samples in the data's layout), so the flags and the metrics are identical by
construction:

    --run DIR [DIR ...]   run folders written by that backend's trainer
    --checkpoint PATH     a specific checkpoint (one run only; default: the latest)
    --raw                 evaluate the raw parameters instead of the EMA
    --num-steps N [N ...] sampling steps (default: the task's `eval_steps` by method: digits
                          MeanFlow 1 2, flow matching 1 10; reach MeanFlow 1, flow matching
                          1 4, regression 1)
    --sampling K=V[,V...] a sampling knob of the run's method (imf / pmf: omega, t_min,
                          t_max; default the settings' sample_omega etc.), repeatable:
                          one record per combination of the listed values
    --n-per-class 100     digits: samples per class (>= 2);  --rollouts 100  reach: rollouts
    --execute 10          reach: actions executed per chunk before replanning
    --seed 0              evaluation noise / tasks (the same for every backend and method)
    --json FILE           also write the records as JSON;  --no-plots  no PNG files
    --no-anchors          no baseline rows (see below)

Digits records: accuracy (fixed classifier, conditioning class), fd (its features vs the
held-out digits), fd_real, k-NN precision / recall (with pr_k and pr_reference) and the
within-class diversity_ratio, and the copying figures against the TRAINING digits (nearest-
training distances, exact / near copies, distinct samples, the data-copying test copy_z and its
verdict copying; meanflow_common.evaluate.digits_eval, copying). Reach records: success,
collision and timeout rates, successes above / below the obstacle, mode entropy, per-start
mode coverage, clearance and path length (and their ratios to the expert's), and the sides
the first chunk from the start commits to (open loop: a policy averaging the two modes goes
"between"); see meanflow_common.evaluate.reach_metrics. After the runs come the anchors of
each task evaluated (meanflow_common.evaluate.anchors: the trivial digit generators, the
real training digits, a copier, shrunk digits and a mode collapse; the reach expert), scored
on the same noise and tasks; --no-anchors leaves them out. Figures go to <run>/eval_<nfe>nfe.png.
What a task's records hold is its `meanflow_common.tasks.Task.evaluate` (and `anchors`); the
command itself knows no task.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from functools import partial
from typing import Callable, Optional, Sequence

import numpy as np

from meanflow_common.cli_args import non_negative_int, positive_int
from meanflow_common.evaluate.anchors import anchor_records, finish_records
from meanflow_common.evaluate.table import format_table
from meanflow_common.json_io import write_json
from meanflow_common.sampling import sampling_knobs
from meanflow_common.tasks import EvalOptions, get_task
from meanflow_common.train_config import objective_config, train_method

__all__ = ["build_parser", "parse_sampling", "evaluate_loaded", "format_table", "run_eval_cli"]


def parse_sampling(items: Sequence[str]) -> list[dict]:
    """["omega=1,2", "t_min=0.3"] -> [{"omega": 1.0, "t_min": 0.3}, {"omega": 2.0, "t_min": 0.3}]:
    the grid of the listed values (ValueError naming a malformed item or a repeated knob)."""
    axes: dict[str, list[float]] = {}
    for item in items:
        name, eq, values = (part.strip() for part in item.partition("="))
        if not eq or not name or not values:
            raise ValueError(f"--sampling {item!r} is not of the form KNOB=VALUE[,VALUE...]")
        if name in axes:
            raise ValueError(f"--sampling names {name!r} twice; list its values once, comma-separated")
        try:
            axes[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise ValueError(f"--sampling {item!r}: the values must be numbers") from None
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else [{}]


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Evaluate trained runs on their task (digits or reach).")
    p.add_argument("--run", nargs="+", required=True, metavar="DIR", help="run folder(s) of this backend")
    p.add_argument("--checkpoint", help="checkpoint path (one run only; default: the run's latest)")
    p.add_argument("--raw", action="store_true", help="use the raw parameters instead of the EMA")
    p.add_argument("--num-steps", type=positive_int, nargs="+", metavar="N", help="sampling steps (default: by method)")
    p.add_argument("--sampling", action="append", default=[], metavar="KNOB=V[,V...]",
                   help="a sampling knob of the method (imf / pmf: omega, t_min, t_max); repeatable, one record "
                        "per combination")
    p.add_argument("--n-per-class", type=positive_int, default=100, help="digits: samples per class (default 100)")
    p.add_argument("--rollouts", type=positive_int, default=100, help="reach: closed-loop rollouts (default 100)")
    p.add_argument("--execute", type=positive_int, default=10, help="reach: actions executed per chunk (default 10)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="evaluation seed (default 0)")
    p.add_argument("--json", metavar="FILE", help="write the records as JSON")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG figures into the run folders")
    p.add_argument("--no-anchors", action="store_true",
                   help="leave out the baseline rows (trivial digit generators, real digits, the reach expert)")
    return p


def _train_rate(run_dir: str) -> Optional[float]:
    """Median steps/s of the run's metrics.csv (None when absent)."""
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        return None
    from meanflow_common.metrics import read_metrics

    rates = [r["steps_per_s"] for r in read_metrics(path) if np.isfinite(r.get("steps_per_s", np.nan))]
    return float(np.median(rates)) if rates else None


def evaluate_loaded(loaded, run_dir: str, backend: str, num_steps: Optional[Sequence[int]] = None,
                    n_per_class: int = 100, rollouts: int = 100, execute: int = 10, seed: int = 0,
                    plots: bool = True, use_ema: bool = True, sampling: Sequence[dict] = ({},)) -> list[dict]:
    """One record per sampling-step count and sampling setting (`sampling`: {knob: value} each,
    the method's knobs; record["sampling"] holds every knob used, defaults included) for a
    `LoadedRun` (see the module doc)."""
    cfg = loaded.cfg
    task = get_task(cfg.task)
    if task.evaluate is None:
        raise ValueError(f"task {cfg.task!r} has no evaluation (Task.evaluate)")
    steps = tuple(num_steps or task.eval_steps.get(cfg.method, (1,)))
    options = EvalOptions(n_per_class=n_per_class, rollouts=rollouts, execute=execute, seed=seed)
    base = {"run": run_dir, "backend": backend, "task": cfg.task, "method": cfg.method,
            "train_steps": int(loaded.step), "ema": use_ema, "train_steps_per_s": _train_rate(run_dir)}
    defaults = train_method(cfg).sampling_defaults(objective_config(cfg))
    for knobs in sampling:
        sampling_knobs(cfg, 1, knobs)  # a knob the method lacks, or a bad value: refused before any sampling
    records = []
    for knobs, n in itertools.product(sampling, steps):
        t0 = time.perf_counter()
        used = {**defaults, **knobs}
        tag = "".join(f"_{k}{v:g}" for k, v in knobs.items())
        figure = os.path.join(run_dir, f"eval_{n}nfe{tag}.png") if plots else None
        title = f"{backend} {cfg.method}, {n} step(s)" + "".join(f", {k} {v:g}" for k, v in knobs.items())
        metrics = task.evaluate(partial(loaded.sample, **knobs), n, options, figure, title)
        extra = {"sampling": used} if used else {}
        records.append({**base, "num_steps": n, **extra, **metrics, "eval_s": time.perf_counter() - t0})
    return records


def run_eval_cli(load_run: Callable, backend: str, argv: Optional[Sequence[str]] = None) -> int:
    """Parse `argv`, evaluate each run, print the table. Exit status 0, 1 (a run failed to
    load or evaluate: the error is printed), 2 (bad flags)."""
    parser = build_parser(f"python -m {backend}_meanflow.evaluate")
    args = parser.parse_args(argv)
    if args.checkpoint and len(args.run) > 1:
        parser.error("--checkpoint needs exactly one --run")
    if args.n_per_class < 2:
        parser.error(f"--n-per-class must be >= 2 (the within-class diversity needs two samples of a class), "
                     f"got {args.n_per_class}")
    if args.execute > 10:
        parser.error(f"--execute must be in [1, 10] (the chunk length), got {args.execute}")
    try:
        sampling = parse_sampling(args.sampling)
    except ValueError as err:
        parser.error(str(err))
    records = []
    try:
        for run_dir in args.run:
            loaded = load_run(run_dir, checkpoint=args.checkpoint, use_ema=not args.raw)
            records += evaluate_loaded(loaded, run_dir, backend, args.num_steps, args.n_per_class,
                                       args.rollouts, args.execute, args.seed, not args.no_plots, not args.raw,
                                       sampling)
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 1
    if not args.no_anchors:
        tasks = list(dict.fromkeys(r["task"] for r in records))
        records += anchor_records(tasks, args.n_per_class, args.rollouts, args.execute, args.seed)
        finish_records(records)
    print(format_table(records))
    if args.json:
        write_json(args.json, records, indent=2)  # non-finite metrics as "inf" / "nan"
    return 0
