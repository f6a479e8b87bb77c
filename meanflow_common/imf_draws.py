"""The randomness of the iMF and pMF objectives in NumPy float64: the draws and the oracle.

`draw_imf` / `draw_pmf` draw one loss evaluation's randomness from a `numpy.random.Generator`
as an `IMFDraws` (the parity harness casts it for both backends). They are built from the
reference functions below (the "oracle"), which map standard variates to the objective's
randomness by the official formulas; each backend's own drawing functions
(`jax_meanflow.imf_objective.sample_imf_noise`, `torch_meanflow.imf_objective.sample_imf_noise`,
and the `pmf_objective` twins) apply the same formulas and are tested against these.

Draw order (per call; each line one batch of standard variates), as in the official forward:
  iMF: n_t [B], n_r [B] (normal); e [x_shape] (normal); u_t_min [B], u_t_max [B], u_omega [B],
       drop coins [B] (uniform).
  pMF: n_t, n_r; with tr_uniform: coins [B], t_uniform [B], r_uniform [B]; e (normal, times
       noise_scale); u_t_min, u_t_max, u_omega, drop coins.
The official code draws omega in float32 whatever the model's dtype; here everything is float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from meanflow_common.objective_configs import IMFConfig, PMFConfig

__all__ = [
    "IMFDraws",
    "draw_imf",
    "draw_pmf",
    "num_fm",
    "logit_normal",
    "imf_tr",
    "pmf_tr",
    "cfg_scale",
    "cfg_interval",
    "prefix_drop",
]


@dataclass
class IMFDraws:
    """One loss evaluation's randomness (iMF or pMF), NumPy float64 / bool / int.

    e: [B, ...] the data's shape (pMF: already times noise_scale); t, r, omega, t_min, t_max: [B];
    fm_mask: bool [B], the first num_fm samples (r = t, interval [0, 1]); num_drop: int;
    drop_mask: bool [B], the first num_drop samples (label -> null, v_g -> v_t).
    """

    e: np.ndarray
    t: np.ndarray
    r: np.ndarray
    omega: np.ndarray
    t_min: np.ndarray
    t_max: np.ndarray
    fm_mask: np.ndarray
    num_drop: int
    drop_mask: np.ndarray

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------
# The oracle: standard variates -> the objective's randomness
# ----------------------------------------------------------------------------------


def num_fm(batch: int, data_proportion: float) -> int:
    """How many leading samples get r = t: int(batch * data_proportion) (a floor)."""
    return math.floor(batch * data_proportion)


def logit_normal(n: np.ndarray, P_mean: float, P_std: float) -> np.ndarray:
    """sigmoid(P_std n + P_mean) of standard normals n."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(n, np.float64) * P_std + P_mean)))


def imf_tr(t_draw: np.ndarray, r_draw: np.ndarray, data_proportion: float):
    """iMF: (t, r) = (max, min) of the two draws, THEN r = t on the first num_fm samples.

    Returns (t, r, fm_mask), each [B]. An fm sample's t is the larger of its two draws.
    """
    t, r = np.maximum(t_draw, r_draw), np.minimum(t_draw, r_draw)
    fm = np.arange(t.shape[0]) < num_fm(t.shape[0], data_proportion)
    return t, np.where(fm, t, r), fm


def pmf_tr(t_draw: np.ndarray, r_draw: np.ndarray, data_proportion: float, uniform=None, prob: float = 0.1):
    """pMF: optionally replace (t, r) by uniform draws, r = t on the first num_fm samples,
    THEN (t, r) = (max, min). Returns (t, r, fm_mask).

    uniform: None or (coins, t_uniform, r_uniform), each [B] U(0, 1): where coins < prob both
    draws are replaced. The order differs from iMF's: an fm sample's t is its own t draw.
    """
    t, r = np.asarray(t_draw, np.float64), np.asarray(r_draw, np.float64)
    if uniform is not None:
        coins, t_u, r_u = uniform
        mask = np.asarray(coins) < prob
        t, r = np.where(mask, t_u, t), np.where(mask, r_u, r)
    fm = np.arange(t.shape[0]) < num_fm(t.shape[0], data_proportion)
    r = np.where(fm, t, r)
    return np.maximum(t, r), np.minimum(t, r), fm


def cfg_scale(u: np.ndarray, cfg_max: float, cfg_beta: float) -> np.ndarray:
    """Training guidance scale from u ~ U(0, 1): a power law on [1, 1 + cfg_max].

    cfg_beta == 1: exp(u log1p(cfg_max)) (log-uniform); otherwise, with b = cfg_beta,
    exp(log1p(u expm1((1 - b) log1p(cfg_max))) / (1 - b)) (the official stable form).
    """
    u = np.asarray(u, np.float64)
    if cfg_beta == 1.0:
        return np.exp(u * np.log1p(cfg_max))
    log_base = (1.0 - cfg_beta) * np.log1p(cfg_max)
    return np.exp(np.log1p(u * np.expm1(log_base)) / (1.0 - cfg_beta))


def cfg_interval(u_lo: np.ndarray, u_hi: np.ndarray, fm_mask: np.ndarray, cfg):
    """Training guidance interval from u_lo, u_hi ~ U(0, 1): t_min = t_min_low + u_lo (t_min_high
    - t_min_low), t_max likewise; the fm samples get [0, 1]. Returns (t_min, t_max), each [B]."""
    t_min = cfg.t_min_low + np.asarray(u_lo, np.float64) * (cfg.t_min_high - cfg.t_min_low)
    t_max = cfg.t_max_low + np.asarray(u_hi, np.float64) * (cfg.t_max_high - cfg.t_max_low)
    return np.where(fm_mask, 0.0, t_min), np.where(fm_mask, 1.0, t_max)


def prefix_drop(coins: np.ndarray, prob: float):
    """Class dropout: num_drop = #{coins < prob}; the FIRST num_drop samples are dropped.
    Returns (num_drop, drop_mask bool [B])."""
    num_drop = int(np.sum(np.asarray(coins) < prob))
    return num_drop, np.arange(np.shape(coins)[0]) < num_drop


# ----------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------


def _check(rng, x_shape, cfg, cls):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(cfg, cls):
        raise TypeError(f"cfg must be a {cls.__name__}, got {type(cfg).__name__}")
    x_shape = tuple(int(s) for s in x_shape)
    if len(x_shape) < 2 or min(x_shape) < 1:
        raise ValueError(f"x_shape must be [B, ...] with at least 2 non-empty axes, got {x_shape}")
    return x_shape


def _finish(rng, x_shape, cfg, t, r, fm, e):
    b = x_shape[0]
    u_lo, u_hi, u_w, coins = (rng.random(b) for _ in range(4))
    t_min, t_max = cfg_interval(u_lo, u_hi, fm, cfg)
    num_drop, drop_mask = prefix_drop(coins, cfg.class_dropout_prob)
    return IMFDraws(e=e, t=t, r=r, omega=cfg_scale(u_w, cfg.cfg_max, cfg.cfg_beta), t_min=t_min, t_max=t_max,
                    fm_mask=fm, num_drop=num_drop, drop_mask=drop_mask)


def draw_imf(rng: np.random.Generator, x_shape, cfg: IMFConfig) -> IMFDraws:
    """The iMF randomness for data of shape x_shape = [B, ...] (order: module docstring)."""
    x_shape = _check(rng, x_shape, cfg, IMFConfig)
    b = x_shape[0]
    n_t, n_r = rng.standard_normal(b), rng.standard_normal(b)
    t, r, fm = imf_tr(logit_normal(n_t, cfg.P_mean, cfg.P_std), logit_normal(n_r, cfg.P_mean, cfg.P_std),
                      cfg.data_proportion)
    return _finish(rng, x_shape, cfg, t, r, fm, rng.standard_normal(x_shape))


def draw_pmf(rng: np.random.Generator, x_shape, cfg: PMFConfig) -> IMFDraws:
    """The pMF randomness for data of shape x_shape = [B, ...] (order: module docstring)."""
    x_shape = _check(rng, x_shape, cfg, PMFConfig)
    b = x_shape[0]
    n_t, n_r = rng.standard_normal(b), rng.standard_normal(b)
    uniform = tuple(rng.random(b) for _ in range(3)) if cfg.tr_uniform else None
    t, r, fm = pmf_tr(logit_normal(n_t, cfg.P_mean, cfg.P_std), logit_normal(n_r, cfg.P_mean, cfg.P_std),
                      cfg.data_proportion, uniform, cfg.tr_uniform_prob)
    return _finish(rng, x_shape, cfg, t, r, fm, cfg.noise_scale * rng.standard_normal(x_shape))
