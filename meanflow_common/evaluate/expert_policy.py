"""The reach expert as a closed-loop chunk policy, the anchor row of the reach table.

`ExpertPolicy(seed)` is a `policy_fn(obs, noise) -> actions [n, 10, 2]` for
`meanflow_common.evaluate.rollout`: the demonstrations' expert (`reach.expert_action`:
two via points on one side at height w, then the goal, with its action noise), run open loop
over each chunk from the observed position. Its side is a fair coin per rollout, read from
the rollout noise at the first call (the sign of noise[i, 0, 0]), so repeated draws from one
start use both sides as the demonstrations do; w is uniform in the demonstrations' range.

It is stateful (the side, w and the via points already passed of each of the n rollouts):
use a fresh object for each rollout batch; a call with another batch size is refused.
"""
from __future__ import annotations

import numpy as np

from meanflow_common.data import reach

__all__ = ["ExpertPolicy"]


class ExpertPolicy:
    """Closed-loop expert for n rollouts (n fixed by the first call)."""

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng([seed, 11])
        self._sign = self._height = self._leg = None

    def _advance(self, pos: np.ndarray, leg: np.ndarray, waypoints: np.ndarray) -> np.ndarray:
        """Legs after passing every via point within reach of pos (or already behind it in x:
        the robot moves rightwards, so a via point whose x it passed is done)."""
        rows = np.arange(len(pos))
        for _ in range(2):
            wp = waypoints[rows, np.minimum(leg, 2)]
            done = (leg < 2) & ((np.linalg.norm(wp - pos, axis=-1) < reach.VIA_REACHED) | (pos[:, 0] > wp[:, 0]))
            leg = leg + done
        return leg

    def __call__(self, obs, noise) -> np.ndarray:
        obs, noise = np.asarray(obs, np.float64), np.asarray(noise)
        if obs.ndim != 2 or obs.shape[1] not in (reach.OBS_DIM, reach.HISTORY_OBS_DIM):
            raise ValueError(f"obs must be [n, {reach.OBS_DIM}] or [n, {reach.HISTORY_OBS_DIM}] (with history), "
                             f"got {obs.shape}")
        n = len(obs)
        if self._sign is None:
            self._sign = np.where(noise[:, 0, 0] > 0, 1.0, -1.0)
            self._height = self._rng.uniform(*reach.VIA_Y_RANGE, size=n)
            self._leg = np.zeros(n, dtype=np.int64)
        elif n != len(self._sign):
            raise ValueError(f"this ExpertPolicy drives {len(self._sign)} rollouts, called with {n}; use a new one")
        pos, goal = obs[:, :2].copy(), obs[:, 2:4]
        y = self._sign * self._height
        waypoints = np.stack([np.stack([np.full(n, -reach.VIA_X), y], -1),
                              np.stack([np.full(n, reach.VIA_X), y], -1), goal], 1)
        self._leg = leg = self._advance(pos, self._leg, waypoints)
        out = np.zeros((n, reach.CHUNK, reach.ACTION_DIM))
        for k in range(reach.CHUNK):
            leg = self._advance(pos, leg, waypoints)
            a = reach.expert_action(pos, waypoints[np.arange(n), leg], self._rng)
            out[:, k] = a
            pos = pos + a * reach.MAX_STEP
        return out
