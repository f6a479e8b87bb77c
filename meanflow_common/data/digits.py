"""The handwritten digits that ship with scikit-learn, as an 8x8x1 image data set.

`sklearn.datasets.load_digits`: 1797 images of 8x8 pixels with integer values 0..16,
10 classes, no download. Pixels are scaled to [-1, 1] (x / 8 - 1) and laid out NHWC
[N, 8, 8, 1] float32 (the torch trainer transposes to NCHW itself); labels are int64.

The train / held-out split is stratified by class and FIXED (drawn from `SPLIT_SEED`, not
from the data seed): whatever seed trains a model, the evaluation's held-out digits were
never seen in training.
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["SPLIT_SEED", "TEST_FRACTION", "load_digits_split", "to_pixels", "from_pixels"]

SPLIT_SEED = 20250513
TEST_FRACTION = 0.2
PIXEL_MAX = 16.0


def to_pixels(raw: np.ndarray) -> np.ndarray:
    """Raw digit values 0..16 (any shape) -> float32 in [-1, 1]."""
    return (np.asarray(raw, dtype=np.float64) * (2.0 / PIXEL_MAX) - 1.0).astype(np.float32)


def from_pixels(x: np.ndarray) -> np.ndarray:
    """Inverse of `to_pixels` (float64, not rounded or clipped)."""
    return (np.asarray(x, dtype=np.float64) + 1.0) * (PIXEL_MAX / 2.0)


@functools.lru_cache(maxsize=1)
def _split() -> tuple[dict, dict]:
    from sklearn.datasets import load_digits  # local: the data set ships inside scikit-learn

    bunch = load_digits()
    images, labels = bunch.images, bunch.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(len(idx) * TEST_FRACTION))
        test_idx.append(rng.permutation(idx)[:n_test])
    test_idx = np.sort(np.concatenate(test_idx))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)

    def part(idx):
        x = to_pixels(images[idx])[..., None]  # [N, 8, 8, 1] NHWC
        x.setflags(write=False)
        y = labels[idx].copy()
        y.setflags(write=False)
        return {"x": x, "y": y, "index": idx}

    return part(train_idx), part(test_idx)


def load_digits_split() -> tuple[dict, dict]:
    """(train, test) dicts with "x" float32 [N, 8, 8, 1] in [-1, 1], "y" int64 [N] and
    "index" (the row in `load_digits()`, to check disjointness). Read-only arrays."""
    return _split()
