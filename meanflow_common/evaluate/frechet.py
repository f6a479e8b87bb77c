"""Fréchet distance between two feature sets, each summarised by a Gaussian (NumPy only).

FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the formula of FID. The trace of
the matrix square root is computed as the sum of sqrt of the eigenvalues of
S_a^(1/2) S_b S_a^(1/2), a symmetric positive semi-definite matrix, so no complex
intermediate appears (scipy's sqrtm of the non-symmetric S_a S_b can).
"""
from __future__ import annotations

import numpy as np

__all__ = ["gaussian_stats", "frechet_distance", "frechet_from_stats"]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D] (N >= 2), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or inf")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_stats(mu_a, cov_a, mu_b, cov_b) -> float:
    """The Fréchet distance of N(mu_a, cov_a) and N(mu_b, cov_b)."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"mismatched statistics: means {mu_a.shape}, {mu_b.shape}; "
                         f"covariances {cov_a.shape}, {cov_b.shape}")
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt, 0.0))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance between the Gaussians fitted to features_a [N, D] and features_b [M, D]."""
    fa, fb = np.asarray(features_a), np.asarray(features_b)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature sets must be [N, D] and [M, D] with the same D, got {fa.shape}, {fb.shape}")
    return frechet_from_stats(*gaussian_stats(fa), *gaussian_stats(fb))
