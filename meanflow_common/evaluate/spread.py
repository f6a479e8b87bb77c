"""Spreads over training seeds from the evaluators' `--json` files.

    python -m meanflow_common.evaluate.spread runs/final/eval_*.json [--metrics fd recall ...]

Every record of the files (one per run folder, NFE and evaluation seed) is grouped first by
(run folder, NFE): its mean over the evaluation seeds is that run's figure. The run folders
of one recipe differ only by a training-seed suffix `_s<N>` (`runs/final/digits_mf_s0`,
`..._s1`, ...); they are grouped by the folder name without it, and each group prints one
Markdown row per NFE: mean +- standard deviation (ddof 1) over the training seeds, then the
per-seed values in brackets, for each metric. A group with one training seed prints its
evaluation-seed spread instead, marked "(eval seeds)".

Anchor records (the evaluator's default writes them after the runs: no run folder, no NFE)
are grouped by their baseline name ("baseline: copier ...", NFE "-") and follow the runs,
spread over the evaluation seeds. Without --metrics every task present prints its own table
with that task's default metrics (digits: the copying figures too); with --metrics, the
records of the first record's task only. Bad input (a missing file, a file that is not JSON
or not a list of records, a record without a metric asked for) is an error naming the file,
exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from meanflow_common.tasks import get_task

__all__ = ["recipe_of", "seed_means", "spread_rows", "main"]

# Default columns that files evaluated before the copying figures existed lack: left out (with
# a note) when some record of the task lacks them, so such files still print their table.
LATER_METRICS = ("nn_train_px_median", "nn_train_feat_median", "exact_copy_fraction", "near_copy_fraction",
                 "distinct", "copy_z")
_SEED = re.compile(r"_s(\d+)$")


def recipe_of(run: str) -> tuple[str, int | None]:
    """(the run folder without its `_s<N>` suffix, N) ; N is None without a suffix."""
    run = run.rstrip("/")
    m = _SEED.search(run)
    return (run[: m.start()], int(m.group(1))) if m else (run, None)


def _group(r: dict) -> tuple[str, int | None]:
    """(recipe, training seed) of a run record, the recipe tagged with the record's sampling
    knobs when it has any (iMF's omega and interval: each setting its own row);
    ("baseline: <name>", None) of an anchor's."""
    if r.get("run") is None:
        return f"baseline: {r.get('baseline')}", None
    recipe, seed = recipe_of(r["run"])
    knobs = " ".join(f"{k}={v:g}" for k, v in (r.get("sampling") or {}).items())
    return (f"{recipe} ({knobs})" if knobs else recipe), seed


def seed_means(records: Iterable[dict], metrics: Sequence[str]) -> dict:
    """{(recipe, nfe): {training seed: {metric: [value per evaluation seed]}}} (insertion
    order: the records' order).

    A record lacking a metric is a KeyError naming the run and the metric (a digits metric
    asked of a reach file, say)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        recipe, seed = _group(r)
        for m in metrics:
            if m not in r:
                raise KeyError(f"record of {r['run']} (NFE {r.get('num_steps')}) has no metric {m!r}; "
                               f"it has {sorted(k for k, v in r.items() if isinstance(v, (int, float)))}")
            v = r[m]  # None (a test not run) as NaN; bools and "nan" / "inf" strings as floats
            out[(recipe, r.get("num_steps"))][seed][m].append(float("nan") if v is None else float(v))
    return out


def _order(key: tuple) -> tuple:
    """Runs sorted by (recipe, NFE), then the anchors (NFE None) in the order given."""
    recipe, nfe = key
    return (1, "", 0) if nfe is None and recipe.startswith("baseline: ") else (0, recipe, -1 if nfe is None else nfe)


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def spread_rows(records: Iterable[dict], metrics: Sequence[str]) -> list[str]:
    """Markdown rows `| recipe | NFE | seeds | metric ... |` (see the module doc)."""
    rows = []
    # sorted() is stable: the anchors keep the evaluator's order
    for (recipe, nfe), by_seed in sorted(seed_means(records, metrics).items(), key=lambda kv: _order(kv[0])):
        seeds = sorted(by_seed, key=lambda s: -1 if s is None else s)
        cells = []
        for m in metrics:
            per_seed = [float(np.mean(by_seed[s][m])) for s in seeds]
            if len(seeds) > 1:
                cells.append(f"{_fmt(np.mean(per_seed))} ± {_fmt(np.std(per_seed, ddof=1))} "
                             f"({', '.join(_fmt(v) for v in per_seed)})")
            else:
                vals = by_seed[seeds[0]][m]
                cells.append(f"{_fmt(np.mean(vals))} ± {_fmt(np.std(vals, ddof=1))} (eval seeds)" if len(vals) > 1
                             else _fmt(vals[0]))
        n_eval = sorted({len(by_seed[s][metrics[0]]) for s in seeds})
        label = f"{len(seeds)} training x {'/'.join(map(str, n_eval))} eval"
        if _order((recipe, nfe))[0]:  # an anchor: nothing trained
            label = f"{'/'.join(map(str, n_eval))} eval"
        rows.append(f"| {recipe} | {'-' if nfe is None else nfe} | {label} | " + " | ".join(cells) + " |")
    return rows


def _load(path: str) -> list:
    """The records of one --json file; ValueError (naming the file) for bad input."""
    if not os.path.isfile(path):
        raise ValueError(f"no such --json file: {path}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) and "task" in r for r in data):
        raise ValueError(f"{path}: expected the evaluator's list of records (dicts with a 'task'), "
                         f"got {type(data).__name__}")
    return data


def _tables(files: Sequence[str], metrics: Sequence[str] | None) -> list[str]:
    by_task: dict = defaultdict(list)  # task -> [(path, record)], tasks in order of appearance
    for path in files:
        for r in _load(path):
            by_task[r["task"]].append((path, r))
    if not by_task:
        raise ValueError(f"no records in {', '.join(files)}")
    tasks = [next(iter(by_task))] if metrics else list(by_task)
    lines = []
    for task in tasks:
        ms = list(metrics or get_task(task).summary_metrics)
        if not metrics:
            absent = [m for m in ms if m in LATER_METRICS and any(m not in r for _, r in by_task[task])]
            if absent:
                print(f"note: {', '.join(absent)} left out: not in every {task} record (evaluated before they "
                      f"existed?)", file=sys.stderr)
            ms = [m for m in ms if m not in absent]
        for path, r in by_task[task]:
            missing = [m for m in ms if m not in r]
            if missing:
                raise ValueError(f"{path}: record of {r.get('run') or r.get('baseline')} (NFE {r.get('num_steps')}) "
                                 f"has no metric {missing[0]!r} (evaluated before it existed?)")
        lines += (["", f"{task}:"] if len(tasks) > 1 else []) + [
            "| recipe | NFE | seeds | " + " | ".join(ms) + " |", "|---|---|---|" + "---|" * len(ms)]
        lines += spread_rows([r for _, r in by_task[task]], ms)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the spread tables; exit status 0, or 2 for bad input (the message names the file)."""
    p = argparse.ArgumentParser(prog="python -m meanflow_common.evaluate.spread", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="--json files of python -m {jax,torch}_meanflow.evaluate")
    p.add_argument("--metrics", nargs="+", help="record fields (default: by task, one table per task)")
    args = p.parse_args(argv)
    try:
        lines = _tables(args.files, args.metrics)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines).lstrip("\n"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
