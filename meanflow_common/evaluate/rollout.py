"""Closed-loop rollouts of an action-chunk policy in the reach environment (NumPy only).

A policy is `policy_fn(obs, noise) -> actions` with obs float32 [n, 4] ([n, 6] with
`history`: `reach.make_obs` with the position before the last executed step) (all n rollouts at
every replan, finished ones included, so the batch shape never changes), noise float32
[n, 10, 2] (standard normal, drawn here from the rollout seed so that every backend and
every method sees the same noise; a regression policy ignores it) and actions [n, 10, 2]
normalised. The robot executes the first `execute` actions of each chunk (the environment
clips them to [-1, 1]), then the policy replans from the new observation, until the goal
is reached, a collision happens, or `max_steps` steps have passed.

Outcome of each rollout: success (goal within GOAL_TOL, no collision before), collision
(obstacle or leaving the workspace), or timeout. Mode: the side of the obstacle on which
the path crossed x = 0 (0 above, 1 below, -1 never crossed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from meanflow_common.data import reach

__all__ = ["RolloutResult", "rollout", "rollout_metrics", "chunk_dy", "chunk_sides", "first_chunk_modes"]

SIDE_THRESHOLD = 0.1  # |y displacement| of a chunk that counts as committing to a side


@dataclass(frozen=True, eq=False)
class RolloutResult:
    """success, collided, timeout: bool [n]; mode: int [n]; steps: int [n] steps taken;
    paths: float [n, max_steps + 1, 2] positions (frozen after the rollout ended);
    starts, goals: [n, 2]."""

    success: np.ndarray
    collided: np.ndarray
    timeout: np.ndarray
    mode: np.ndarray
    steps: np.ndarray
    paths: np.ndarray
    starts: np.ndarray
    goals: np.ndarray


def _crossing_mode(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Mode of the segments p0 -> p1 [n, 2] that cross x = 0 (else -1): the sign of y there."""
    crosses = (p0[:, 0] < 0.0) & (p1[:, 0] >= 0.0)
    dx = np.where(crosses, p1[:, 0] - p0[:, 0], 1.0)
    y = p0[:, 1] + (0.0 - p0[:, 0]) / dx * (p1[:, 1] - p0[:, 1])
    return np.where(crosses, np.where(y >= 0.0, 0, 1), -1)


def rollout(policy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int = 100, seed: int = 0,
            execute: int = reach.CHUNK, max_steps: int = 150, starts=None, goals=None,
            history: bool = False) -> RolloutResult:
    """Run n closed-loop rollouts from tasks drawn with `seed` (or the given starts/goals);
    history: observations with the last step's displacement (zero at the start)."""
    if not 1 <= execute <= reach.CHUNK:
        raise ValueError(f"execute must be in [1, {reach.CHUNK}], got {execute}")
    rng = np.random.default_rng([seed, 7])
    if starts is None or goals is None:
        starts, goals = reach.sample_tasks(n, rng)
    starts, goals = np.asarray(starts, np.float64), np.asarray(goals, np.float64)
    n = len(starts)
    pos = starts.copy()
    prev = starts.copy()
    paths = np.zeros((n, max_steps + 1, 2))
    paths[:, 0] = pos
    active = np.ones(n, dtype=bool)
    success, collided = np.zeros(n, bool), np.zeros(n, bool)
    mode = np.full(n, -1)
    steps = np.zeros(n, dtype=np.int64)
    t = 0
    while t < max_steps and active.any():
        # The policy always sees all n rollouts (finished ones frozen): a constant batch
        # shape, so a jitted sampler compiles once, and each rollout's noise is the same
        # whatever the others do.
        idx = np.flatnonzero(active)
        noise = rng.standard_normal((n, reach.CHUNK, reach.ACTION_DIM)).astype(np.float32)
        chunk = np.asarray(policy_fn(reach.make_obs(pos, goals, prev if history else None), noise), dtype=np.float64)
        if chunk.shape != (n, reach.CHUNK, reach.ACTION_DIM):
            raise ValueError(f"policy_fn returned shape {chunk.shape}, expected {(n, reach.CHUNK, reach.ACTION_DIM)}")
        chunk = chunk[idx]
        for j in range(execute):
            if t >= max_steps or not active.any():
                break
            live = active[idx]
            i = idx[live]
            new, hit = reach.step(pos[i], chunk[live, j])
            m = _crossing_mode(pos[i], new)
            mode[i] = np.where((mode[i] < 0) & (m >= 0), m, mode[i])
            prev[i] = pos[i]
            pos[i] = new
            steps[i] += 1
            reached = ~hit & (np.linalg.norm(new - goals[i], axis=-1) < reach.GOAL_TOL)
            collided[i] |= hit
            success[i] |= reached
            active[i] = ~(hit | reached)
            t += 1
            paths[:, t] = pos
    paths[:, t + 1:] = pos[:, None]
    timeout = ~success & ~collided
    return RolloutResult(success, collided, timeout, mode, steps, paths, starts, goals)


def rollout_metrics(result: RolloutResult) -> dict:
    """Rates over the rollouts, and the mode balance among the successful ones."""
    n = len(result.success)
    ok = result.success
    above = int(np.sum(ok & (result.mode == 0)))
    below = int(np.sum(ok & (result.mode == 1)))
    return {
        "n": n,
        "success_rate": float(ok.mean()),
        "collision_rate": float(result.collided.mean()),
        "timeout_rate": float(result.timeout.mean()),
        "success_above": above,
        "success_below": below,
        "mode_above_fraction": above / max(above + below, 1),
        "both_modes": bool(above > 0 and below > 0),
        "mean_steps_success": float(result.steps[ok].mean()) if ok.any() else float("nan"),
    }


def chunk_dy(chunks: np.ndarray) -> np.ndarray:
    """float [...]: the y displacement of action chunks [..., T, 2] run open loop, actions
    clipped as the environment does."""
    return np.clip(np.asarray(chunks, np.float64), -1.0, 1.0)[..., 1].sum(-1) * reach.MAX_STEP


def chunk_sides(chunks: np.ndarray, threshold: float = SIDE_THRESHOLD) -> np.ndarray:
    """Side each action chunk [n, T, 2] commits to: 0 above, 1 below, -1 between (its
    `chunk_dy` is within +-threshold)."""
    dy = chunk_dy(chunks)
    return np.where(dy > threshold, 0, np.where(dy < -threshold, 1, -1))


def first_chunk_modes(policy_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n: int = 100,
                      seed: int = 0, threshold: float = SIDE_THRESHOLD, history: bool = False) -> dict:
    """The policy's first chunk from n start states (open loop, one chunk each).

    From the start box both sides are equally good; an expert chunk moves about 0.3 up or
    down within its 10 steps, a policy that averages the two modes moves straight ahead.
    Returns the fractions of chunks going above, below, or between (|dy| <= threshold).
    """
    rng = np.random.default_rng([seed, 8])
    starts, goals = reach.sample_tasks(n, rng)
    noise = rng.standard_normal((n, reach.CHUNK, reach.ACTION_DIM)).astype(np.float32)
    chunk = np.asarray(policy_fn(reach.make_obs(starts, goals, starts if history else None), noise))
    if chunk.shape != (n, reach.CHUNK, reach.ACTION_DIM):
        raise ValueError(f"policy_fn returned shape {chunk.shape}, expected {(n, reach.CHUNK, reach.ACTION_DIM)}")
    side = chunk_sides(chunk, threshold)
    return {"first_chunk_above": float(np.mean(side == 0)), "first_chunk_below": float(np.mean(side == 1)),
            "first_chunk_between": float(np.mean(side == -1))}
