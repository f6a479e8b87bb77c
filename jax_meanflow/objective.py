"""The MeanFlow objective, JAX reference (official `meanflow.py` semantics).

The loss is a pure function of explicit randomness: `sample_noise` draws a `MeanFlowNoise`
(e, t, r, drop_mask) from a key, and `meanflow_loss` consumes it. The network enters only
through `u_fn(z, t, h, y, train) -> u`, with z and u of the data's shape and t, h of shape [B].

Time convention: z_t = (1 - t) x + t e, so t = 1 is pure noise and 0 <= r <= t <= 1.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from meanflow_common.checks import check_times
from meanflow_common.config import MeanFlowConfig

__all__ = [
    "MeanFlowNoise",
    "MeanFlowOutput",
    "sample_tr",
    "sample_noise",
    "guidance_velocity",
    "cond_drop",
    "meanflow_loss",
    "flow_matching_loss",
]

UFn = Callable[..., jax.Array]  # u_fn(z, t, h, y, train) -> u


@struct.dataclass
class MeanFlowNoise:
    """All randomness of one loss evaluation.

    e: [B, ...] like the data; t, r: [B] with r <= t; drop_mask: bool [B], the first
    num_drop entries True (class dropout in its final, prefix form).
    """

    e: jax.Array
    t: jax.Array
    r: jax.Array
    drop_mask: jax.Array


@struct.dataclass
class MeanFlowOutput:
    """Named outputs of `meanflow_loss` / `flow_matching_loss`.

    u, du_dt, v, v_g, u_tgt: data shape [B, ...]. loss_per_sample: [B], the unweighted
    L_i = sum (u - u_tgt)^2 over the non-batch axes. weight: [B], the adaptive weight
    (L_i + norm_eps) ** norm_p (no gradient). loss: scalar, mean_i L_i / weight_i.
    v_loss: [B], sum (u - v)^2 (monitoring only).
    """

    u: jax.Array
    du_dt: jax.Array
    v: jax.Array
    v_g: jax.Array
    u_tgt: jax.Array
    loss_per_sample: jax.Array
    loss: jax.Array
    v_loss: jax.Array
    weight: jax.Array


# ----------------------------------------------------------------------------------
# Sampling the randomness
# ----------------------------------------------------------------------------------


def _time_dist(key, batch_size: int, cfg: MeanFlowConfig, which: str, dtype) -> jax.Array:
    """[B] draws of `which` ("t" or "r"): logit-normal(cfg.time_dist_params(which)) or U(0, 1)."""
    if cfg.noise_dist == "logit_normal":
        mean, std = cfg.time_dist_params(which)
        n = jax.random.normal(key, (batch_size,), dtype=dtype)
        return jax.nn.sigmoid(n * std + mean)
    return jax.random.uniform(key, (batch_size,), dtype=dtype)


def sample_tr(key, batch_size: int, cfg: MeanFlowConfig, dtype=jnp.float32):
    """Draw (t, r), each [B], with 0 <= r <= t <= 1.

    t and r are drawn independently from `cfg.noise_dist` (logit-normal: t with
    (P_mean_t, P_std_t), r with (P_mean_r, P_std_r), both defaulting to (P_mean, P_std)),
    then:
    - rt_mask "first" (JAX reference): t, r = max, min; the FIRST floor(B * data_proportion)
      samples get r = t.
    - rt_mask "random" (py-meanflow): a per-sample coin, True with probability
      data_proportion (py-meanflow's `1 - ratio`), marks the samples that get r = t, in one
      of two orders (py-meanflow uses this time convention too: z = (1 - t) x + t e):
      v0: t, r = max, min, then r = t on the masked samples;
      v1: r = t on the masked samples, then r = min(t, r); t keeps its own draw, so its
      marginal is the plain t distribution, and an unmasked draw with r > t also ends at
      r = t (a fraction p + (1 - p) P(r > t) of ties).
    Draws: split(key, 3) -> (t, r, coins).
    """
    k_t, k_r, k_m = jax.random.split(key, 3)
    t = _time_dist(k_t, batch_size, cfg, "t", dtype)
    r = _time_dist(k_r, batch_size, cfg, "r", dtype)
    if cfg.rt_mask == "first":
        t, r = jnp.maximum(t, r), jnp.minimum(t, r)
        num_fm = math.floor(batch_size * cfg.data_proportion)
        return t, jnp.where(jnp.arange(batch_size) < num_fm, t, r)
    fm_mask = jax.random.uniform(k_m, (batch_size,), dtype=dtype) < cfg.data_proportion
    if cfg.tr_sampler == "v0":
        t, r = jnp.maximum(t, r), jnp.minimum(t, r)
        return t, jnp.where(fm_mask, t, r)
    r = jnp.where(fm_mask, t, r)
    return t, jnp.minimum(t, r)


def _prefix_drop_mask(key, batch_size: int, prob: float) -> jax.Array:
    """Bernoulli(prob) per sample, counted; the first num_drop samples are dropped."""
    num_drop = jnp.sum(jax.random.uniform(key, (batch_size,)) < prob)
    return jnp.arange(batch_size) < num_drop


def sample_noise(key, x_shape, cfg: MeanFlowConfig, dtype=jnp.float32) -> MeanFlowNoise:
    """Draw e ~ N(0, I) of `x_shape` ([B, ...]), (t, r) by `sample_tr` and the drop mask."""
    x_shape = tuple(x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x_shape must be [B, ...] with at least 2 axes, got {x_shape}")
    k_e, k_tr, k_d = jax.random.split(key, 3)
    batch = x_shape[0]
    e = jax.random.normal(k_e, x_shape, dtype=dtype)
    t, r = sample_tr(k_tr, batch, cfg, dtype)
    return MeanFlowNoise(e=e, t=t, r=r, drop_mask=_prefix_drop_mask(k_d, batch, cfg.class_dropout_prob))


# ----------------------------------------------------------------------------------
# Guidance and class dropout
# ----------------------------------------------------------------------------------


def _bcast(a, ndim: int) -> jax.Array:
    """[B] -> [B, 1, ..., 1] of rank `ndim`, for broadcasting per-sample values on data."""
    return jnp.reshape(a, a.shape + (1,) * (ndim - a.ndim))


def _concrete(a) -> np.ndarray | None:
    """The value of `a` as numpy, or None under tracing (the check is then skipped)."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _label_array(y, what: str) -> jax.Array:
    if not isinstance(y, (jax.Array, np.ndarray)):
        raise TypeError(f"{what} needs array labels y, got {type(y).__name__}")
    return jnp.asarray(y)


def _null_like(y: jax.Array, null_y) -> jax.Array:
    null = jnp.asarray(null_y, y.dtype)
    try:
        return jnp.broadcast_to(null, y.shape)
    except ValueError as err:
        raise ValueError(f"null_y of shape {null.shape} does not broadcast to y {y.shape}") from err


def guidance_velocity(u_fn: UFn, v, z_t, t, y, cfg: MeanFlowConfig, null_y) -> jax.Array:
    """The guided velocity v_g [B, ...] (classifier-free guidance folded into the target).

    v, z_t: [B, ...]; t: [B]; y: labels [B, ...]; null_y: the null conditioning, broadcastable
    to y. guidance_eq "": v_g = v. guidance_eq "cfg", with omega' = omega and kappa' = kappa
    where t_start <= t <= t_end, else omega' = 1 and kappa' = 0:
      kappa == 0: v_g = v_uncond + omega' (v - v_uncond)
      kappa > 0:  v_g = omega' v + (1 - omega' - kappa') v_uncond + kappa' v_cond
    where v_uncond = u(z_t, t, 0, null_y) and v_cond = u(z_t, t, 0, y), evaluated with
    train=False and without gradient.
    """
    if not cfg.guidance_eq:
        return v
    if null_y is None:
        raise ValueError("guidance_eq='cfg' needs null_y (the null conditioning); got None")
    y = _label_array(y, "guidance")
    null_y = _null_like(y, null_y)
    h0 = jnp.zeros_like(t)
    v_uncond = jax.lax.stop_gradient(u_fn(z_t, t, h0, null_y, False))
    in_window = _bcast((t >= cfg.t_start) & (t <= cfg.t_end), v.ndim)
    omega = jnp.where(in_window, jnp.asarray(cfg.omega, v.dtype), jnp.asarray(1.0, v.dtype))
    if cfg.kappa == 0:
        return v_uncond + omega * (v - v_uncond)
    v_cond = jax.lax.stop_gradient(u_fn(z_t, t, h0, y, False))
    kappa = jnp.where(in_window, jnp.asarray(cfg.kappa, v.dtype), jnp.asarray(0.0, v.dtype))
    return omega * v + (1 - omega - kappa) * v_uncond + kappa * v_cond


def cond_drop(v, v_g, y, drop_mask, null_y):
    """Class dropout: where drop_mask [B] is True, y -> null_y and v_g -> v.

    Returns (y_inp of y's shape, v_g [B, ...]). With null_y None, y may be any pytree
    (e.g. conditioning tokens) as long as no sample is dropped (checked when concrete).
    """
    if jnp.shape(drop_mask) != (v.shape[0],):
        raise ValueError(f"drop_mask must have shape [B]=({v.shape[0]},), got {jnp.shape(drop_mask)}")
    v_g = jnp.where(_bcast(drop_mask, v.ndim), v, v_g)
    if null_y is None:
        mask = _concrete(drop_mask)
        if mask is not None and mask.any():
            raise ValueError(
                f"drop_mask drops {int(mask.sum())} samples but null_y is None; "
                "pass null_y or sample with class_dropout_prob=0"
            )
        return y, v_g
    y = _label_array(y, "class dropout")
    if y.shape[:1] != (v.shape[0],):
        raise ValueError(f"y must be [B, ...] with B={v.shape[0]}, got shape {y.shape}")
    y_inp = jnp.where(_bcast(drop_mask, y.ndim), _null_like(y, null_y), y)
    return y_inp, v_g


# ----------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------


def _check_inputs(x, noise: MeanFlowNoise):
    if x.ndim < 2:
        raise ValueError(f"x must be [B, ...] with at least 2 axes, got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}")
    if noise.e.shape != x.shape:
        raise ValueError(f"noise.e has shape {noise.e.shape} but x has shape {x.shape}")
    if noise.e.dtype != x.dtype:
        raise TypeError(f"noise.e has dtype {noise.e.dtype} but x has dtype {x.dtype}")
    batch = (x.shape[0],)
    for name in ("t", "r", "drop_mask"):
        shape = jnp.shape(getattr(noise, name))
        if shape != batch:
            raise ValueError(f"noise.{name} must have shape [B]={batch}, got {shape}")
    if jnp.asarray(noise.drop_mask).dtype != jnp.bool_:
        raise TypeError(f"noise.drop_mask must be bool, got {jnp.asarray(noise.drop_mask).dtype}")
    t, r = _concrete(noise.t), _concrete(noise.r)
    if t is not None and r is not None:
        check_times(t, r)


def _finish(u, du_dt, v, v_g, u_tgt, cfg: MeanFlowConfig) -> MeanFlowOutput:
    axes = tuple(range(1, u.ndim))
    loss_per_sample = jnp.sum((u - u_tgt) ** 2, axis=axes)
    weight = jax.lax.stop_gradient((loss_per_sample + cfg.norm_eps) ** cfg.norm_p)
    return MeanFlowOutput(
        u=u,
        du_dt=du_dt,
        v=v,
        v_g=v_g,
        u_tgt=u_tgt,
        loss_per_sample=loss_per_sample,
        loss=jnp.mean(loss_per_sample / weight),
        v_loss=jnp.sum((u - v) ** 2, axis=axes),
        weight=weight,
    )


def _interpolate(x, noise: MeanFlowNoise, cfg, u_fn, y, null_y):
    """z_t, v = e - x, and the guided, class-dropped target velocity with its labels."""
    t = jnp.asarray(noise.t, x.dtype)
    tb = _bcast(t, x.ndim)
    z_t = (1 - tb) * x + tb * noise.e
    v = noise.e - x
    v_g = guidance_velocity(u_fn, v, z_t, t, y, cfg, null_y)
    y_inp, v_g = cond_drop(v, v_g, y, noise.drop_mask, null_y)
    return t, z_t, v, jax.lax.stop_gradient(v_g), y_inp


# ----------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------


def meanflow_loss(
    u_fn: UFn, x, y, noise: MeanFlowNoise, cfg: MeanFlowConfig, null_y: Any = None, train: bool = True
) -> MeanFlowOutput:
    """The MeanFlow loss on data x [B, ...] with labels y [B, ...] (or None).

    u_fn(z, t, h, y, train) -> u is the network. null_y is the null conditioning (for the
    DiT: full((B,), num_classes)); it may be None only with guidance off and no class
    dropout. du/dt is the total derivative along the flow: one `jax.jvp` of
    (z, t, r) -> u(z, t, t - r) at (z_t, t, r) with tangents (v_g, 1, 0) (or (v, 1, 0)
    with cfg.tangent == "v"). u_tgt = stop_gradient(v_g - clip(t - r, 0, 1) du/dt).
    cfg.jvp_path is a PyTorch-side memory option; JAX always takes the single jvp.
    """
    x = jnp.asarray(x)
    _check_inputs(x, noise)
    t, z_t, v, v_g, y_inp = _interpolate(x, noise, cfg, u_fn, y, null_y)
    r = jnp.asarray(noise.r, x.dtype)

    def u_of(z, t_, r_):
        return u_fn(z, t_, t_ - r_, y_inp, train)

    tangent_z = v_g if cfg.tangent == "guided" else v
    u, du_dt = jax.jvp(u_of, (z_t, t, r), (tangent_z, jnp.ones_like(t), jnp.zeros_like(r)))
    h = jnp.clip(t - r, 0.0, 1.0) if cfg.clip_h else t - r
    u_tgt = jax.lax.stop_gradient(v_g - _bcast(h, x.ndim) * du_dt)
    return _finish(u, du_dt, v, v_g, u_tgt, cfg)


def flow_matching_loss(
    u_fn: UFn, x, y, noise: MeanFlowNoise, cfg: MeanFlowConfig, null_y: Any = None, train: bool = True
) -> MeanFlowOutput:
    """Plain flow matching (baseline): u(z_t, t, h=0) regressed on v_g, no JVP.

    noise.r is ignored (h = 0 for every sample) and du_dt is zeros. Guidance, class
    dropout and the adaptive weight follow cfg exactly as in `meanflow_loss`, so the two
    losses agree when r = t; set cfg.norm_p = 0 for the unweighted sum of squares.
    """
    x = jnp.asarray(x)
    _check_inputs(x, noise)
    t, z_t, v, v_g, y_inp = _interpolate(x, noise, cfg, u_fn, y, null_y)
    u = u_fn(z_t, t, jnp.zeros_like(t), y_inp, train)
    return _finish(u, jnp.zeros_like(u), v, v_g, v_g, cfg)
