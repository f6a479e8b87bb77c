"""Reach metrics that separate a multimodal policy from one that averages (NumPy only).

- mode entropy: the entropy in bits of the side (above / below) taken among the rollouts
  that crossed x = 0; 1 bit for a 50/50 split, 0 for one side only.
- per-start mode coverage (`mode_coverage`): `starts` tasks (start, goal) each rolled out
  `draws` times with different noise; a start is covered when each side takes at least
  `min_fraction` of its draws (counting every draw, whatever its outcome). A deterministic
  policy (regression) covers no start even if different starts go different ways.
- clearance (`path_stats`): the smallest distance of a successful path to the obstacle's
  surface (exact point-to-segment distance over the executed steps); path length: the sum
  of its step lengths. Reported as medians over the successful rollouts.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from meanflow_common.data import reach
from meanflow_common.evaluate.rollout import RolloutResult, first_chunk_modes, rollout, rollout_metrics

__all__ = ["mode_entropy", "mode_coverage", "path_stats", "score_policy", "COVERAGE_STARTS", "COVERAGE_DRAWS",
           "COVERAGE_MIN_FRACTION"]

COVERAGE_STARTS = 20
COVERAGE_DRAWS = 50
COVERAGE_MIN_FRACTION = 0.1


def mode_entropy(modes: np.ndarray) -> float:
    """Entropy in bits of the sides in modes int [n] (0 above, 1 below; -1 never crossed,
    ignored); NaN when no rollout crossed."""
    modes = np.asarray(modes)
    crossed = modes[modes >= 0]
    if crossed.size == 0:
        return float("nan")
    p = np.array([np.mean(crossed == 0), np.mean(crossed == 1)])
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() + 0.0)


def mode_coverage(policy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], starts: int = COVERAGE_STARTS,
                  draws: int = COVERAGE_DRAWS, min_fraction: float = COVERAGE_MIN_FRACTION, seed: int = 0,
                  execute: int = reach.CHUNK, history: bool = False) -> dict:
    """Per-start mode coverage and entropy of `policy_fn` (one batch of starts * draws rollouts).

    Returns {"coverage_covered": starts covered (int), "coverage_starts", "coverage_draws",
    "coverage_min_fraction", "coverage_entropy_bits": mean over the starts of the per-start
    mode entropy (starts where nothing crossed count as 0)}.
    """
    if starts < 1 or draws < 1:
        raise ValueError(f"starts and draws must be >= 1, got {starts}, {draws}")
    if not 0.0 < min_fraction <= 0.5:
        raise ValueError(f"min_fraction must be in (0, 0.5], got {min_fraction}")
    s, g = reach.sample_tasks(starts, np.random.default_rng([seed, 9]))
    result = rollout(policy_fn, seed=seed, execute=execute, starts=np.repeat(s, draws, 0), goals=np.repeat(g, draws, 0),
                     history=history)
    modes = result.mode.reshape(starts, draws)
    above, below = (modes == 0).mean(1), (modes == 1).mean(1)
    covered = (above >= min_fraction) & (below >= min_fraction)
    entropy = [mode_entropy(m) for m in modes]
    return {"coverage_covered": int(covered.sum()), "coverage_starts": int(starts), "coverage_draws": int(draws),
            "coverage_min_fraction": float(min_fraction),
            "coverage_entropy_bits": float(np.mean(np.nan_to_num(entropy, nan=0.0)))}


def _segment_clearance(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of segments p0 -> p1 [..., 2] to the obstacle's surface (negative inside)."""
    d, rel = p1 - p0, reach.OBSTACLE_CENTER - p0
    s = np.clip((rel * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-300), 0.0, 1.0)
    closest = p0 + s[..., None] * d
    return np.linalg.norm(closest - reach.OBSTACLE_CENTER, axis=-1) - reach.OBSTACLE_RADIUS


def path_stats(result: RolloutResult) -> dict:
    """Clearance and path length of the successful rollouts, and the overall mode entropy.

    Returns {"clearance_median", "clearance_min", "path_length_median", "mode_entropy_bits"}
    (NaN clearance / length when nothing succeeded).
    """
    ok = np.flatnonzero(result.success)
    clear, length = [], []
    for i in ok:
        p = result.paths[i, : result.steps[i] + 1]
        clear.append(_segment_clearance(p[:-1], p[1:]).min() if len(p) > 1 else np.inf)
        length.append(np.linalg.norm(np.diff(p, axis=0), axis=-1).sum())
    nan = float("nan")
    return {"clearance_median": float(np.median(clear)) if ok.size else nan,
            "clearance_min": float(np.min(clear)) if ok.size else nan,
            "path_length_median": float(np.median(length)) if ok.size else nan,
            "mode_entropy_bits": mode_entropy(result.mode)}


def score_policy(make_policy: Callable[[], Callable[[np.ndarray, np.ndarray], np.ndarray]], rollouts: int = 100,
                 execute: int = reach.CHUNK, seed: int = 0, history: bool = False) -> tuple[dict, RolloutResult]:
    """Every reach metric of a policy: the closed-loop rollouts (`rollout_metrics`,
    `path_stats`), the open-loop first chunks and the per-start coverage.

    `make_policy()` returns the policy_fn; it is called once per batch of rollouts, so a
    stateful policy (the expert) starts fresh each time; history: the two-frame observations
    (`rollout`). Returns (metrics, the rollouts).
    """
    result = rollout(make_policy(), n=rollouts, seed=seed, execute=execute, history=history)
    metrics = {**rollout_metrics(result), **path_stats(result),
               **first_chunk_modes(make_policy(), n=rollouts, seed=seed, history=history),
               **mode_coverage(make_policy(), seed=seed, execute=execute, history=history)}
    return metrics, result
