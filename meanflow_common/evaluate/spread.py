"""Spreads over training seeds from the evaluators' `--json` files.

    python -m meanflow_common.evaluate.spread runs/final/eval_*.json [--metrics fd recall ...]

Every record of the files (one per run folder, NFE and evaluation seed) is grouped first by
(run folder, NFE): its mean over the evaluation seeds is that run's figure. The run folders
of one recipe differ only by a training-seed suffix `_s<N>` (`runs/final/digits_mf_s0`,
`..._s1`, ...); they are grouped by the folder name without it, and each group prints one
Markdown row per NFE: mean +- standard deviation (ddof 1) over the training seeds, then the
per-seed values in brackets, for each metric. A group with one training seed prints its
evaluation-seed spread instead, marked "(eval seeds)".
"""
from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from meanflow_common.tasks import get_task

__all__ = ["recipe_of", "seed_means", "spread_rows", "main"]

_SEED = re.compile(r"_s(\d+)$")


def recipe_of(run: str) -> tuple[str, int | None]:
    """(the run folder without its `_s<N>` suffix, N) ; N is None without a suffix."""
    run = run.rstrip("/")
    m = _SEED.search(run)
    return (run[: m.start()], int(m.group(1))) if m else (run, None)


def seed_means(records: Iterable[dict], metrics: Sequence[str]) -> dict:
    """{(recipe, nfe): {training seed: {metric: [value per evaluation seed]}}}.

    A record lacking a metric is a KeyError naming the run and the metric (a digits metric
    asked of a reach file, say)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        recipe, seed = recipe_of(r["run"])
        for m in metrics:
            if m not in r:
                raise KeyError(f"record of {r['run']} (NFE {r.get('num_steps')}) has no metric {m!r}; "
                               f"it has {sorted(k for k, v in r.items() if isinstance(v, (int, float)))}")
            out[(recipe, r["num_steps"])][seed][m].append(float(r[m]))
    return out


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}"


def spread_rows(records: Iterable[dict], metrics: Sequence[str]) -> list[str]:
    """Markdown rows `| recipe | NFE | seeds | metric ... |` (see the module doc)."""
    rows = []
    for (recipe, nfe), by_seed in sorted(seed_means(records, metrics).items()):
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
        rows.append(f"| {recipe} | {nfe} | {label} | " + " | ".join(cells) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meanflow_common.evaluate.spread", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="--json files of python -m {jax,torch}_meanflow.evaluate")
    p.add_argument("--metrics", nargs="+",
                   help="record fields (default: the summary metrics of the first record's task)")
    args = p.parse_args(argv)
    records = []
    for path in args.files:
        if not os.path.isfile(path):
            raise SystemExit(f"no such --json file: {path}")
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise SystemExit(f"{path}: expected the evaluator's list of records, got {type(data).__name__}")
        records += data
    if not records:
        raise SystemExit("no records in the given files")
    metrics = args.metrics or get_task(records[0]["task"]).summary_metrics
    print("| recipe | NFE | seeds | " + " | ".join(metrics) + " |")
    print("|---|---|---|" + "---|" * len(metrics))
    for row in spread_rows(records, metrics):
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
