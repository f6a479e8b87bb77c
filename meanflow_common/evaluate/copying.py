"""Copying and novelty of generated samples against the TRAINING set (NumPy + scikit-learn).

FD, precision and recall compare the samples with the held-out digits only, so a generator
that returns training digits scores as well as the real data (better than any model). The
figures here compare the samples with the training set instead:

- nearest-training-neighbour distance of every sample (`nearest_distances`), in pixels and in
  classifier features; the held-out digits' own distances are the level of a fresh sample;
- exact copies: distance <= EXACT_TOL; near copies: distance below the smallest distance
  between two different training digits (`near_copy_radius`: no real digit is that close to
  another, so a sample that close to a training digit is that digit plus a perturbation);
- distinct samples: the number of different images (`distinct_count`);
- the data-copying test of Meehan, Chaudhuri and Dasgupta (AISTATS 2020, "A Non-Parametric
  Test to Detect Data-Copying in Generative Models"), `CopyTest`:

  The instance space is cut into cells by k-means on the training set. In each cell pi, with
  the held-out points P (n of them) and the generated points Q (m) that fall in it, the
  Mann-Whitney U statistic of their distances to the nearest training point,
      U = sum_{i, j} [d(Q_j) > d(P_i)] + 0.5 [d(Q_j) = d(P_i)],
  is standardised as Z_U(pi) = (U - m n / 2) / sqrt(m n (m + n + 1) / 12). Cells with at
  least `min_count` points of both sets enter the aggregate
      Z_U = sum_pi w_pi Z_U(pi) / sum_pi w_pi,  w_pi = fraction of the held-out points in pi.

  Null hypothesis: the generated samples are as far from the training set as fresh samples of
  the data distribution are (in every cell, d(Q) and d(P) have the same distribution). Then
  each Z_U(pi) is approximately standard normal, the cells are independent, and the weighted
  mean has standard deviation sqrt(sum w^2) / sum w <= 1. The test rejects "no copying" when
  Z_U < Z_THRESHOLD = -3 (at least three standard deviations below 0: a false alarm rate
  under the null of at most 0.13%, one-sided). Z_U > 0 means the samples are FARTHER from the
  training set than real data (under-fitting, not copying); the test says nothing about it.

Distances are Euclidean, in float64, computed block-wise (N x M never held at once).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EXACT_TOL", "Z_THRESHOLD", "N_CELLS", "MIN_COUNT", "nearest_distances", "near_copy_radius",
           "distinct_count", "mann_whitney_z", "CopyTest"]

EXACT_TOL = 1e-6  # data-scale units; training pixels are multiples of 1/8, so a copy is exact
Z_THRESHOLD = -3.0
N_CELLS = 5  # 359 held-out digits: about 70 per cell, enough for a per-cell U statistic
MIN_COUNT = 10


def _flat(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what} must be [N >= 1, D] (or images [N, ...]), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or inf")
    return x


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Expanded |a|^2 + |b|^2 - 2 a.b (one matrix product); its round-off only picks the
    # nearest row, whose distance is then recomputed directly (an exact copy gives 0.0).
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)


def nearest_distances(x, ref, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(distance float64 [N], index int64 [N]) from each row of x [N, D] to its nearest row of
    ref [M, D] (images [N, ...] are flattened)."""
    x, ref = _flat(x, "samples"), _flat(ref, "reference")
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"samples and reference must have the same D, got {x.shape} and {ref.shape}")
    dist, idx = np.empty(len(x)), np.empty(len(x), np.int64)
    for i in range(0, len(x), block):
        idx[i:i + block] = _sq_dists(x[i:i + block], ref).argmin(1)
    dist[:] = np.sqrt(((x - ref[idx]) ** 2).sum(1))
    return dist, idx


def near_copy_radius(train) -> float:
    """The smallest distance between two different training rows [M, D] (duplicates skipped:
    a repeated training image would otherwise make the radius 0)."""
    t = _flat(train, "training set")
    best = np.inf
    for i in range(0, len(t), 1024):
        d = np.sqrt(_sq_dists(t[i:i + 1024], t))
        d[np.arange(len(d)), np.arange(i, i + len(d))] = np.inf  # the row itself
        d[d <= EXACT_TOL] = np.inf  # exact duplicates (round-off residues of the expansion are ~1e-7)
        best = min(best, float(d.min()))
    return best


def distinct_count(x) -> int:
    """The number of different rows of x [N, ...] (exact equality)."""
    return int(len(np.unique(_flat(x, "samples"), axis=0)))


def mann_whitney_z(gen_d, ref_d) -> float:
    """Z of the Mann-Whitney U of gen_d [m] against ref_d [n] (ties count 1/2, no tie
    correction of the variance, as in Meehan et al.): negative when gen_d is smaller."""
    g, r = np.asarray(gen_d, np.float64).ravel(), np.asarray(ref_d, np.float64).ravel()
    m, n = len(g), len(r)
    if m == 0 or n == 0:
        raise ValueError(f"both sets need points, got {m} and {n}")
    u = (g[:, None] > r[None, :]).sum() + 0.5 * (g[:, None] == r[None, :]).sum()
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


@dataclass(frozen=True, eq=False)
class CopyTest:
    """The three-sample data-copying test (module doc) with its training and held-out sets
    fixed: `CopyTest.fit(train [M, D], held_out [n, D])`, then `test(generated [N, D])`."""

    train: np.ndarray  # [M, D]
    centroids: np.ndarray  # [k, D], k-means on the training set
    held_out_d: np.ndarray  # [n] held-out distances to the nearest training point
    held_out_cell: np.ndarray  # [n] their cells
    min_count: int

    @classmethod
    def fit(cls, train, held_out, n_cells: int = N_CELLS, min_count: int = MIN_COUNT, seed: int = 0) -> "CopyTest":
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        train, held_out = _flat(train, "training set"), _flat(held_out, "held-out set")
        if n_cells < 1 or n_cells > len(train):
            raise ValueError(f"n_cells must be in [1, {len(train)}], got {n_cells}")
        with threadpool_limits(limits=1):  # thread contention on a small shared CPU (see classifier.py)
            km = KMeans(n_clusters=n_cells, n_init=10, random_state=seed).fit(train)
        centroids = km.cluster_centers_.astype(np.float64)
        return cls(train, centroids, nearest_distances(held_out, train)[0],
                   nearest_distances(held_out, centroids)[1], int(min_count))

    def test(self, generated) -> dict:
        """{"z": aggregate Z_U (NaN when no cell has enough points), "cells": the number of
        cells that entered it, "cell_z": Z_U per cell (NaN for the cells left out),
        "copying": z < Z_THRESHOLD (None when z is NaN: not tested, too few samples per cell),
        "threshold": Z_THRESHOLD}."""
        gen = _flat(generated, "generated samples")
        gen_d = nearest_distances(gen, self.train)[0]
        gen_cell = nearest_distances(gen, self.centroids)[1]
        cell_z, weights = np.full(len(self.centroids), np.nan), np.zeros(len(self.centroids))
        for c in range(len(self.centroids)):
            g, r = gen_d[gen_cell == c], self.held_out_d[self.held_out_cell == c]
            if len(g) >= self.min_count and len(r) >= self.min_count:
                cell_z[c], weights[c] = mann_whitney_z(g, r), len(r) / len(self.held_out_d)
        used = weights > 0
        z = float((weights[used] * cell_z[used]).sum() / weights[used].sum()) if used.any() else float("nan")
        return {"z": z, "cells": int(used.sum()), "cell_z": cell_z.tolist(),
                "copying": None if np.isnan(z) else bool(z < Z_THRESHOLD), "threshold": Z_THRESHOLD}
