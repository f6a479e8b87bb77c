"""The anchor rows of the evaluation table: trivial digit generators and the reach expert,
scored by exactly the code and inputs (noise, tasks, seed) that score the trained runs.

An anchor record has the keys of a run's record, with "method": "baseline", "baseline":
its name, and None where a run has a value that an anchor does not (run folder, backend,
training steps, sampling steps).
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from meanflow_common.evaluate.baselines import DIGIT_BASELINES
from meanflow_common.evaluate.digits_eval import digit_eval_inputs, score_digits
from meanflow_common.evaluate.expert_policy import ExpertPolicy
from meanflow_common.evaluate.reach_metrics import score_policy

__all__ = ["anchor_records", "add_expert_ratios", "EXPERT"]

EXPERT = "expert"


def _record(task: str, name: str, metrics: dict, t0: float) -> dict:
    return {"run": None, "backend": None, "task": task, "method": "baseline", "baseline": name,
            "train_steps": None, "num_steps": None, "ema": None, "train_steps_per_s": None, **metrics,
            "eval_s": time.perf_counter() - t0}


def anchor_records(tasks: Sequence[str], n_per_class: int = 100, rollouts: int = 100, execute: int = 10,
                   seed: int = 0) -> list[dict]:
    """Records of the anchors of each task in `tasks` ("digits", "reach"; others have none)."""
    records = []
    if "digits" in tasks:
        noise, labels = digit_eval_inputs(n_per_class, seed)
        for name, factory in DIGIT_BASELINES.items():
            t0 = time.perf_counter()
            gen = factory(seed)
            records.append(_record("digits", name, score_digits(np.asarray(gen(noise, labels)), labels), t0))
    if "reach" in tasks:
        t0 = time.perf_counter()
        metrics, _ = score_policy(lambda: ExpertPolicy(seed), rollouts, execute, seed)
        records.append(_record("reach", EXPERT, metrics, t0))
    return records


def add_expert_ratios(records: Sequence[dict]) -> None:
    """Set clearance_vs_expert and path_length_vs_expert (median over the expert's median) on
    every reach record, in place, when the expert's record is among them."""
    expert = next((r for r in records if r["task"] == "reach" and r.get("baseline") == EXPERT), None)
    if expert is None:
        return
    for r in records:
        if r["task"] == "reach":
            r["clearance_vs_expert"] = r["clearance_median"] / expert["clearance_median"]
            r["path_length_vs_expert"] = r["path_length_median"] / expert["path_length_median"]
