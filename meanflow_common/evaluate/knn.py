"""k-NN precision and recall of generated features against a reference set (NumPy only).

Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative
models": each set's manifold is approximated by the union of balls around its points, the
ball of a point reaching its k-th nearest neighbour within the same set (the point itself
not counted). Then

    precision = fraction of generated points inside the reference manifold,
    recall    = fraction of reference points inside the generated manifold.

Precision is high when samples look real; recall is high when the samples cover the
variation of the real data. A generator that repeats one image per class has zero-radius
balls and a recall near 0 whatever its precision (FD cannot tell it from a diverse one as
clearly).
"""
from __future__ import annotations

import numpy as np

__all__ = ["knn_radii", "knn_precision_recall", "DEFAULT_K"]

DEFAULT_K = 3


def _check(f: np.ndarray, what: str, k: int) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{what} must be [N, D], got shape {f.shape}")
    if f.shape[0] <= k:
        raise ValueError(f"{what} needs more than k = {k} points for k-NN radii, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{what} contain NaN or inf")
    return f


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] (clipped at 0 against round-off)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(f: np.ndarray, k: int = DEFAULT_K) -> np.ndarray:
    """Distance float64 [N] from each point of f [N, D] to its k-th nearest other point."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    f = _check(f, "features", k)
    d = _sq_dists(f, f)
    # Column k after sorting: column 0 is the point itself (distance 0); duplicates of it
    # count as neighbours at distance 0, as they should (a repeated image has radius 0).
    return np.sqrt(np.partition(d, k, axis=1)[:, k])


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = 2048) -> float:
    """Fraction of points within radius of at least one centre."""
    r2 = radii * radii
    inside = np.zeros(len(points), dtype=bool)
    for i in range(0, len(points), block):
        inside[i:i + block] = (_sq_dists(points[i:i + block], centres) <= r2[None, :]).any(1)
    return float(inside.mean())


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict:
    """Precision and recall of fake [M, D] against the reference real [N, D].

    Returns {"precision", "recall", "k"}.
    """
    real = _check(real, "reference features", k)
    fake = _check(fake, "generated features", k)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sets must have the same D, got {real.shape} and {fake.shape}")
    return {
        "precision": _coverage(fake, real, knn_radii(real, k)),
        "recall": _coverage(real, fake, knn_radii(fake, k)),
        "k": int(k),
    }
