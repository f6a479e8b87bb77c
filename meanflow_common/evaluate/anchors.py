"""The anchor rows of the evaluation table: each task's reference rows (`Task.anchors`: the
trivial digit generators, the reach expert), scored by exactly the code and inputs (noise,
tasks, seed) that score the trained runs.

An anchor record has the keys of a run's record, with "method": "baseline", "baseline":
its name, and None where a run has a value that an anchor does not (run folder, backend,
training steps, sampling steps).
"""
from __future__ import annotations

import time
from typing import Sequence

from meanflow_common.tasks import EvalOptions, get_task

__all__ = ["anchor_records", "finish_records"]


def _record(task: str, name: str, metrics: dict, t0: float) -> dict:
    return {"run": None, "backend": None, "task": task, "method": "baseline", "baseline": name,
            "train_steps": None, "num_steps": None, "ema": None, "train_steps_per_s": None, **metrics,
            "eval_s": time.perf_counter() - t0}


def anchor_records(tasks: Sequence[str], n_per_class: int = 100, rollouts: int = 100, execute: int = 10,
                   seed: int = 0) -> list[dict]:
    """Records of the anchors (`Task.anchors`) of each task in `tasks`, in that order (digits:
    the trivial generators; reach: the expert; a task without anchors adds none)."""
    options = EvalOptions(n_per_class=n_per_class, rollouts=rollouts, execute=execute, seed=seed)
    records = []
    for name in tasks:
        task = get_task(name)
        if task.anchors is None:
            continue
        rows = iter(task.anchors(options))
        while True:  # each row timed on its own
            t0 = time.perf_counter()
            row = next(rows, None)
            if row is None:
                break
            records.append(_record(task.name, row[0], row[1], t0))
    return records


def finish_records(records: list) -> None:
    """Each evaluated task's `finish_records` on the records, in place (reach: the ratios of
    clearance and path length to the expert's)."""
    for name in dict.fromkeys(r["task"] for r in records):
        task = get_task(name)
        if task.finish_records is not None:
            task.finish_records(records)
