"""Built-in data sets for both backends (NumPy only): `digits_dataset`, `reach_dataset` and
`batch_at` (a task's data by its name: `meanflow_common.tasks.get_dataset`).

Built-in data sets (the tasks of `meanflow_common.tasks` hold them):
- "digits": scikit-learn's 8x8 handwritten digits (`digits.py`); batches
  {"x": float32 [B, 8, 8, 1] NHWC in [-1, 1], "y": int64 [B]}.
- "reach": the point robot reaching around an obstacle (`reach.py`); batches
  {"obs": float32 [B, 4], "actions": float32 [B, 10, 2] normalised to [-1, 1]}.

Batches are a pure function of (seed, step): epoch e = step // steps_per_epoch uses the
permutation drawn from (seed, e), and the step's batch is its slice number
step % steps_per_epoch (the last partial batch of an epoch is dropped). A trainer that
stores the step therefore resumes at exactly the same data position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from meanflow_common.data import digits as _digits
from meanflow_common.data import reach as _reach

__all__ = ["Dataset", "digits_dataset", "reach_dataset", "reach_history_dataset", "batch_at", "steps_per_epoch",
           "batch_indices"]

REACH_TRAIN_DEMOS = 400
REACH_TEST_DEMOS = 100
_REACH_STREAMS = {"train": 1, "test": 2}  # independent generator streams per split


@dataclass(frozen=True, eq=False)
class Dataset:
    """A task's train and held-out splits (dicts of NumPy arrays, same leading length).

    keys: the fields a batch carries (the model's inputs); the splits may hold more
    (digits: "index"; reach: "mode", "demo") for evaluation and tests.
    info: task facts (digits: image_shape, num_classes, layout; reach: obs_dim,
    action_dim, act_window_size, max_step).
    """

    task: str
    seed: int
    train: Mapping[str, np.ndarray]
    test: Mapping[str, np.ndarray]
    keys: tuple
    info: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.train[self.keys[0]])

    def split(self, name: str) -> Mapping[str, np.ndarray]:
        if name not in ("train", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train' or 'test'")
        return self.train if name == "train" else self.test


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _reach_split(seed: int, name: str, n_demos: int, history: bool = False) -> dict:
    rng = np.random.default_rng([seed, _REACH_STREAMS[name]])
    demos = _reach.expert_demos(n_demos, rng)
    if not demos["success"].all():
        raise RuntimeError(f"{int((~demos['success']).sum())} expert demonstrations failed (seed {seed})")
    out = _reach.chunk_demos(demos, history=history)
    for a in out.values():
        a.setflags(write=False)
    return out


def digits_dataset(seed: int = 0) -> Dataset:
    """The "digits" data: the split is fixed (independent of seed; see digits.py)."""
    seed = _check_seed(seed)
    train, test = _digits.load_digits_split()
    info = {"image_shape": (8, 8, 1), "num_classes": 10, "layout": "NHWC", "pixel_range": (-1.0, 1.0)}
    return Dataset("digits", seed, train, test, ("x", "y"), info)


def reach_dataset(seed: int = 0, history: bool = False) -> Dataset:
    """The "reach" data: demonstrations generated from seed (400 train demos, 100 held-out
    demos drawn from a separate stream, so the splits share no demonstration). history:
    the "reach_history" observations (the same demonstrations, obs [M, 6])."""
    seed = _check_seed(seed)
    train = _reach_split(seed, "train", REACH_TRAIN_DEMOS, history)
    test = _reach_split(seed, "test", REACH_TEST_DEMOS, history)
    info = {"obs_dim": _reach.HISTORY_OBS_DIM if history else _reach.OBS_DIM, "action_dim": _reach.ACTION_DIM,
            "act_window_size": _reach.CHUNK, "max_step": _reach.MAX_STEP, "action_range": (-1.0, 1.0),
            "history": bool(history)}
    return Dataset("reach_history" if history else "reach", seed, train, test, ("obs", "actions"), info)


def reach_history_dataset(seed: int = 0) -> Dataset:
    """`reach_dataset(seed, history=True)`."""
    return reach_dataset(seed, history=True)


def steps_per_epoch(dataset: Dataset, batch_size: int, split: str = "train") -> int:
    """Full batches per epoch (the last partial batch is dropped)."""
    n = len(dataset.split(split)[dataset.keys[0]])
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {split} split's {n} examples")
    return n // int(batch_size)


def batch_indices(dataset: Dataset, seed: int, step: int, batch_size: int, split: str = "train") -> np.ndarray:
    """Row indices int64 [batch_size] of the batch at `step` (see the module doc)."""
    seed = _check_seed(seed)
    if int(step) != step or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    per_epoch = steps_per_epoch(dataset, batch_size, split)
    epoch, k = divmod(int(step), per_epoch)
    n = len(dataset.split(split)[dataset.keys[0]])
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[k * batch_size:(k + 1) * batch_size]


def batch_at(dataset: Dataset, seed: int, step: int, batch_size: int, split: str = "train") -> dict:
    """The batch at `step`: {key: array [batch_size, ...]} for key in dataset.keys.

    Deterministic in (seed, step); fresh writable copies (a caller may modify them).
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"batch_at needs a Dataset from get_dataset, got {type(dataset).__name__}")
    idx = batch_indices(dataset, seed, step, batch_size, split)
    data = dataset.split(split)
    return {k: np.array(data[k][idx]) for k in dataset.keys}
