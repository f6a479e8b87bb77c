"""The "reach" task: a FLOWER policy for the point robot reaching around an obstacle.

Batches {"obs": float [B, obs_dim], "actions": float [B, T, A] in [-1, 1]}; the network is
a `FLOWER_PRESETS` transformer behind a LowDimEncoder of the observations
(`jax_meanflow.policy`, `torch_meanflow.policy`), so a run records obs_dim to be rebuilt.
No class labels: guidance and class dropout are off. Besides MeanFlow and flow matching
it trains the "regression" baseline. Scored by closed-loop rollouts against the scripted
expert (`meanflow_common.evaluate.reach_metrics`).

"reach_history" is the same task with two-frame observations [B, 6] (the position, the goal
and the last step's displacement; `meanflow_common.data.reach`), the same demonstrations,
network presets and metrics, its rollouts observing the same way.
"""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from meanflow_common.config import FLOWER_PRESETS
from meanflow_common.data import reach_dataset, reach_history_dataset
from meanflow_common.tasks.base import EvalOptions, Task
from meanflow_common.tasks.registry import register_task

__all__ = ["REACH", "REACH_HISTORY", "EXPERT", "add_expert_ratios"]

NAME = "reach"
HISTORY_NAME = "reach_history"
EXPERT = "expert"


def _data_shape(mc) -> tuple:
    return (mc.act_window_size, mc.action_dim)


def _check_batch(mc, batch) -> None:
    obs, act = batch["obs"], batch["actions"]
    want = _data_shape(mc)
    if act.ndim != 3 or tuple(act.shape[1:]) != want:
        raise ValueError(f"action batch has shape {tuple(act.shape)} but the policy takes "
                         f"[B, {want[0]}, {want[1]}] (act_window_size={want[0]}, action_dim={want[1]})")
    if obs.ndim != 2:
        raise ValueError(f"observations must be [B, obs_dim], got shape {tuple(obs.shape)}")


def _check_cond(mc, cond, allow_null: bool) -> np.ndarray:
    cond = np.asarray(cond)
    if cond.dtype.kind != "f" or cond.ndim != 2 or cond.shape[0] < 1:
        raise ValueError(f"observations must be float [B, obs_dim] with B >= 1, got dtype {cond.dtype}, "
                         f"shape {cond.shape}")
    return cond


def _objective(mf):
    # the conditioning is continuous tokens: no null class to guide with or drop to
    return replace(mf, guidance_eq="", class_dropout_prob=0.0)


def _run_info(example) -> dict:
    return {"obs_dim": int(example["obs"].shape[1])}


def _evaluate(sample, num_steps: int, options: EvalOptions, figure, title: str, history: bool = False) -> dict:
    from meanflow_common.evaluate.reach_metrics import score_policy

    def policy_fn(obs, noise):
        return sample(obs, noise=noise, num_steps=num_steps)

    metrics, result = score_policy(lambda: policy_fn, options.rollouts, options.execute, options.seed, history)
    if figure:
        from meanflow_common.evaluate.plots import save_rollouts

        save_rollouts(result, figure, title=f"{title}: success {metrics['success_rate']:.2f}")
    return metrics


def _anchors(options: EvalOptions, history: bool = False):
    """The scripted expert, on the tasks the runs get."""
    from meanflow_common.evaluate.expert_policy import ExpertPolicy
    from meanflow_common.evaluate.reach_metrics import score_policy

    metrics, _ = score_policy(lambda: ExpertPolicy(options.seed), options.rollouts, options.execute, options.seed,
                              history)
    yield EXPERT, metrics


def add_expert_ratios(records, task: str = NAME) -> None:
    """Set clearance_vs_expert and path_length_vs_expert (median over the expert's median) on
    every record of `task`, in place, when the expert's record of that task is among them."""
    expert = next((r for r in records if r["task"] == task and r.get("baseline") == EXPERT), None)
    if expert is None:
        return
    for r in records:
        if r["task"] == task:
            r["clearance_vs_expert"] = r["clearance_median"] / expert["clearance_median"]
            r["path_length_vs_expert"] = r["path_length_median"] / expert["path_length_median"]


REACH = register_task(Task(
    name=NAME,
    dataset=reach_dataset,
    presets=FLOWER_PRESETS,
    preset_kind="FLOWER preset",
    batch_keys=("obs", "actions"),
    data_key="actions",
    cond_key="obs",
    float_keys=("obs", "actions"),
    data_shape=_data_shape,
    layout="[B, T, A]",
    check_batch=_check_batch,
    check_cond=_check_cond,
    hooks={"jax": "jax_meanflow.tasks:REACH", "torch": "torch_meanflow.tasks:REACH"},
    methods=("meanflow", "flow_matching", "regression"),
    objective=_objective,
    run_info=_run_info,
    evaluate=_evaluate,
    eval_steps={"meanflow": (1,), "flow_matching": (1, 4), "regression": (1,)},
    summary_metrics=("success_rate", "mode_above_fraction", "mode_entropy_bits", "coverage_covered",
                     "clearance_median", "path_length_median", "first_chunk_between"),
    anchors=_anchors,
    finish_records=add_expert_ratios,
), builtin=True)


REACH_HISTORY = register_task(replace(
    REACH, name=HISTORY_NAME, dataset=reach_history_dataset,
    evaluate=partial(_evaluate, history=True), anchors=partial(_anchors, history=True),
    finish_records=partial(add_expert_ratios, task=HISTORY_NAME),
), builtin=True)
