"""The (t, r) and class-dropout samplers written out in NumPy (float64), from their definitions.

The formulas of the two references, independent of both backends:
- JAX reference ("first"): t, r = max, min of the two draws; the FIRST floor(B * p) samples
  get r = t (p = data_proportion).
- py-meanflow ("random"), with a per-sample coin keep ~ Bernoulli(p):
  v0: t, r = max, min; then r = t where keep;
  v1: r = t where keep; then r = min(t, r); t keeps its own draw.
- t ~ logit-normal(P_mean_t, P_std_t), r ~ logit-normal(P_mean_r, P_std_r) (each defaulting
  to P_mean, P_std), or both U(0, 1).
- class dropout: num_drop = number of Bernoulli(prob) coins; the first num_drop samples drop.

`order_tr` takes the raw draws, so a test can feed it the very numbers a backend drew.
"""
from __future__ import annotations

import math

import numpy as np

from meanflow_common.config import MeanFlowConfig


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(a, np.float64)))


def raw_times(normal_t: np.ndarray, normal_r: np.ndarray, cfg: MeanFlowConfig):
    """Standard-normal draws [B] -> (t, r) raw logit-normal draws [B] (logit_normal only)."""
    (mt, st), (mr, sr) = cfg.time_dist_params("t"), cfg.time_dist_params("r")
    return sigmoid(np.asarray(normal_t) * st + mt), sigmoid(np.asarray(normal_r) * sr + mr)


def order_tr(t_raw: np.ndarray, r_raw: np.ndarray, coins: np.ndarray | None, cfg: MeanFlowConfig):
    """The sampler's ordering and r = t masking of raw draws [B]: returns (t, r) [B].

    coins: uniform [0, 1) draws [B] (keep = coins < data_proportion), used with rt_mask "random".
    """
    t_raw, r_raw = np.asarray(t_raw, np.float64), np.asarray(r_raw, np.float64)
    if cfg.rt_mask == "first":
        t, r = np.maximum(t_raw, r_raw), np.minimum(t_raw, r_raw)
        n_eq = math.floor(t.shape[0] * cfg.data_proportion)
        r = r.copy()
        r[:n_eq] = t[:n_eq]
        return t, r
    keep = np.asarray(coins) < cfg.data_proportion
    if cfg.tr_sampler == "v0":
        t, r = np.maximum(t_raw, r_raw), np.minimum(t_raw, r_raw)
        return t, np.where(keep, t, r)
    r = np.where(keep, t_raw, r_raw)
    return t_raw, np.minimum(t_raw, r)


def draw_tr(rng: np.random.Generator, batch: int, cfg: MeanFlowConfig):
    """(t, r) [B] each from NumPy's generator, by the reference formulas."""
    if cfg.noise_dist == "logit_normal":
        t_raw, r_raw = raw_times(rng.standard_normal(batch), rng.standard_normal(batch), cfg)
    else:
        t_raw, r_raw = rng.uniform(size=batch), rng.uniform(size=batch)
    coins = rng.uniform(size=batch) if cfg.rt_mask == "random" else None
    return order_tr(t_raw, r_raw, coins, cfg)


def drop_prefix(coins: np.ndarray, prob: float) -> np.ndarray:
    """bool [B]: the first (number of coins < prob) samples are True."""
    coins = np.asarray(coins)
    return np.arange(coins.shape[0]) < int(np.sum(coins < prob))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| of two 1-D samples."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_critical(n: int, m: int, alpha: float = 1e-3) -> float:
    """Asymptotic two-sample KS critical value at level alpha: c(alpha) sqrt((n + m) / (n m))."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))
