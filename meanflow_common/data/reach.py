"""Point-robot reaching around an obstacle: a two-mode action-chunk task (NumPy only).

The world (all lengths in the same units, workspace [-1, 1]^2):
- a disc obstacle of radius 0.25 at the origin;
- start positions uniform in the box x in [-0.85, -0.65], y in [-0.05, 0.05] (left, in
  front of the obstacle);
- goal positions uniform in the box x in [0.65, 0.85], y in [-0.3, 0.3] (right);
- the robot moves by a displacement per step; an action is that displacement divided by
  `MAX_STEP` = 0.05, each component clipped to [-1, 1] (so actions are normalised to
  [-1, 1] and the robot moves at most 0.05 per axis per step);
- the goal is reached when the robot is within 0.05 of it; a step whose segment enters the
  obstacle disc or leaves the workspace is a collision.

The expert: a fair coin picks the mode, "above" or "below" the obstacle (independent of the
start, so the demonstrations are genuinely bimodal at the start). It steers through two via
points (-0.35, s w) and (0.35, s w), s = +1 above / -1 below, w uniform in [0.45, 0.6]
per demonstration, then to the goal, at a speed of 0.04 per step (0.8 normalised), with
Gaussian noise of std 0.05 (normalised units) on every action component. Every straight
leg keeps at least 0.1 away from the disc, and the steering corrects the noise.

Why the start box is narrow in y: with starts spread over y in [-0.3, 0.3], the start's
offset alone tells which side is closer, and a regression (MSE) policy picks that side and
succeeds (measured: 98% of 100 rollouts); the modes then never have to be represented.
Starting in front of the obstacle, both sides are equally plausible from every start, so
a policy must commit to one side; averaging the two leads straight into the obstacle.

Observations are [x, y, goal_x, goal_y] (obs_dim 4). A training sample is the observation
at step k and the 10 actions k..k+9 of the same demonstration; past the goal the chunk is
padded with zero actions (the robot stays).

With `history=True` (the "reach_history" task) an observation also carries the last step's
displacement over MAX_STEP, [x, y, goal_x, goal_y, dx, dy] (obs_dim 6; zero at the start):
a two-frame observation, as action-chunk policies in the field take. Without it a position
seen at step k >= 1 has already moved toward its demonstration's side, and it overlaps
the start box, so near a start the training chunks mostly go to the side of the start's y
offset; with it the start (no motion yet) is told apart from the later steps.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "OBSTACLE_CENTER", "OBSTACLE_RADIUS", "START_BOX", "GOAL_BOX", "GOAL_TOL", "MAX_STEP",
    "BOUND", "OBS_DIM", "HISTORY_OBS_DIM", "ACTION_DIM", "CHUNK", "MODES",
    "sample_tasks", "make_obs", "step", "segment_hits_obstacle", "expert_action",
    "expert_demos", "chunk_demos",
]

OBSTACLE_CENTER = np.array([0.0, 0.0])
OBSTACLE_RADIUS = 0.25
START_BOX = np.array([[-0.85, -0.05], [-0.65, 0.05]])  # [low, high]; narrow in y, see the module doc
GOAL_BOX = np.array([[0.65, -0.3], [0.85, 0.3]])
GOAL_TOL = 0.05
MAX_STEP = 0.05
BOUND = 1.0
OBS_DIM = 4
HISTORY_OBS_DIM = 6
ACTION_DIM = 2
CHUNK = 10
MODES = ("above", "below")

EXPERT_SPEED = 0.04
EXPERT_NOISE = 0.05
VIA_X = 0.35
VIA_Y_RANGE = (0.45, 0.6)
VIA_REACHED = 0.06  # a via point is passed when within this distance (> EXPERT_SPEED)


def sample_tasks(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(starts [n, 2], goals [n, 2]) drawn uniformly from START_BOX and GOAL_BOX."""
    starts = rng.uniform(START_BOX[0], START_BOX[1], size=(n, 2))
    goals = rng.uniform(GOAL_BOX[0], GOAL_BOX[1], size=(n, 2))
    return starts, goals


def make_obs(pos: np.ndarray, goal: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
    """Observation [n, 4] = [x, y, goal_x, goal_y] as float32; given the previous positions
    prev [n, 2], [n, 6] with the displacement (pos - prev) / MAX_STEP appended."""
    parts = [pos, goal] if prev is None else [pos, goal, (np.asarray(pos) - prev) / MAX_STEP]
    return np.concatenate(parts, axis=-1).astype(np.float32)


def segment_hits_obstacle(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """bool [n]: does the segment p0 -> p1 ([n, 2] each) come closer than the radius to the
    obstacle centre (the exact point-to-segment distance, so fast steps cannot tunnel)."""
    d = p1 - p0
    rel = OBSTACLE_CENTER - p0
    len2 = np.maximum((d * d).sum(-1), 1e-300)
    s = np.clip((rel * d).sum(-1) / len2, 0.0, 1.0)
    closest = p0 + s[:, None] * d
    return np.linalg.norm(closest - OBSTACLE_CENTER, axis=-1) < OBSTACLE_RADIUS


def step(pos: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move by normalised actions [n, 2] (clipped to [-1, 1], times MAX_STEP).

    Returns (new positions [n, 2], collided bool [n]); collided means the move crossed the
    obstacle disc or left the workspace [-BOUND, BOUND]^2.
    """
    action = np.asarray(action, dtype=np.float64)
    if action.shape != pos.shape or action.shape[-1] != ACTION_DIM:
        raise ValueError(f"actions must be [n, {ACTION_DIM}] like the positions {pos.shape}, got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError("actions contain NaN or inf")
    new = pos + np.clip(action, -1.0, 1.0) * MAX_STEP
    collided = segment_hits_obstacle(pos, new) | (np.abs(new) > BOUND).any(-1)
    return new, collided


def _via_points(sign: np.ndarray, height: np.ndarray, goals: np.ndarray) -> np.ndarray:
    """Waypoints [n, 3, 2]: the two via points on the chosen side, then the goal."""
    y = sign * height
    via1 = np.stack([np.full_like(y, -VIA_X), y], -1)
    via2 = np.stack([np.full_like(y, VIA_X), y], -1)
    return np.stack([via1, via2, goals], 1)


def expert_action(pos, target, rng: np.random.Generator, noise: float = EXPERT_NOISE) -> np.ndarray:
    """Normalised expert actions [n, 2] steering from pos toward target at EXPERT_SPEED
    (not overshooting), plus Gaussian noise, clipped to [-1, 1]."""
    delta = target - pos
    dist = np.linalg.norm(delta, axis=-1, keepdims=True)
    move = delta / np.maximum(dist, 1e-12) * np.minimum(dist, EXPERT_SPEED)
    a = move / MAX_STEP + noise * rng.standard_normal(pos.shape)
    return np.clip(a, -1.0, 1.0)


def expert_demos(n: int, rng: np.random.Generator, max_steps: int = 120) -> dict:
    """Roll the noisy expert from n random tasks.

    Returns {"pos": [n, max_steps + 1, 2] positions (frozen after the goal), "actions":
    [n, max_steps, 2] normalised (zero after the goal), "length": int [n] steps to reach
    the goal, "goal": [n, 2], "mode": int [n] (0 above, 1 below), "success": bool [n]
    (goal reached, no collision)}.
    """
    starts, goals = sample_tasks(n, rng)
    mode = (rng.random(n) < 0.5).astype(np.int64)
    height = rng.uniform(*VIA_Y_RANGE, size=n)
    waypoints = _via_points(np.where(mode == 0, 1.0, -1.0), height, goals)
    pos = np.zeros((n, max_steps + 1, 2))
    actions = np.zeros((n, max_steps, 2))
    pos[:, 0] = starts
    leg = np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    collided = np.zeros(n, dtype=bool)
    length = np.full(n, max_steps, dtype=np.int64)
    rows = np.arange(n)
    for k in range(max_steps):
        p = pos[:, k]
        while True:  # pass every via point already within reach
            near = (leg < 2) & (np.linalg.norm(waypoints[rows, leg] - p, axis=-1) < VIA_REACHED)
            if not near.any():
                break
            leg = leg + near
        a = expert_action(p, waypoints[rows, leg], rng)
        a[done] = 0.0
        new, hit = step(p, a)
        collided |= hit & ~done
        actions[:, k] = a
        pos[:, k + 1] = new
        reached = ~done & (np.linalg.norm(new - goals, axis=-1) < GOAL_TOL)
        length[reached] = k + 1
        done |= reached
    return {"pos": pos, "actions": actions, "length": length, "goal": goals, "mode": mode,
            "success": done & ~collided}


def chunk_demos(demos: dict, chunk: int = CHUNK, history: bool = False) -> dict:
    """Training samples from demonstrations: one per step k < length of each demo.

    Returns {"obs": float32 [M, 4] ([M, 6] with history: the displacement from step k - 1,
    zero at k = 0), "actions": float32 [M, chunk, 2] (zero-padded past the
    goal), "mode": int64 [M], "demo": int64 [M] (row of the demo)}.
    """
    obs, acts, modes, demo_ids = [], [], [], []
    n, max_steps = demos["actions"].shape[:2]
    padded = np.concatenate([demos["actions"], np.zeros((n, chunk, 2))], axis=1)
    for i in range(n):
        L = int(demos["length"][i])
        if L > max_steps - chunk:
            raise ValueError(f"demo {i} has length {L}: too long for chunks of {chunk} in {max_steps} steps")
        ks = np.arange(L)
        goal = np.broadcast_to(demos["goal"][i], (L, 2))
        pos = demos["pos"][i, :L]
        prev = np.concatenate([pos[:1], pos[:-1]]) if history else None
        obs.append(make_obs(pos, goal, prev))
        acts.append(padded[i, ks[:, None] + np.arange(chunk)])
        modes.append(np.full(L, demos["mode"][i]))
        demo_ids.append(np.full(L, i))
    return {
        "obs": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(acts).astype(np.float32),
        "mode": np.concatenate(modes).astype(np.int64),
        "demo": np.concatenate(demo_ids).astype(np.int64),
    }
