"""The improved MeanFlow (iMF) objective, JAX reference (official imeanflow `imf.py` semantics).

The loss is a pure function of explicit randomness: `sample_imf_noise` draws an `IMFNoise`
(e, t, r, omega, t_min, t_max, fm_mask, drop_mask) from a key, `imf_loss` consumes it. The
network enters only through
    net(z, t, h, omega, t_min, t_max, y) -> (u, v)
with z, u, v [B, H, W, C] (any [B, ...]), t, h, omega, t_min, t_max [B] and y int [B] whose
null label is `null_y` (= num_classes). A network that does not use t (imfDiT) ignores it.

Per sample (z = (1 - t) x + t e, v_t = e - x; sg = stop_gradient):
  v_c, v_u = v-head at (z, t, h=0, omega, [0, 1], y) and at (z, t, 0, 1, [0, 1], null), one call of 2B;
  v_g_fm = v_t + (1 - 1/omega) (v_c - v_u);
  omega' = omega where t_min <= t <= t_max, else 1; v_c' = v-head at (z, t, 0, omega', [0, 1], y);
  v_g = v_t + (1 - 1/omega') (v_c' - v_u), the fm samples take v_g_fm;
  the first num_drop samples: y -> null, v_g -> v_t;
  (u, du/dt), v = jvp of (z, t, r) -> net(z, t, t - r, omega, t_min, t_max, y_dropped) along
  (v_c', 1, 0), v auxiliary (the drawn omega and interval, not omega');
  V = u + (t - r) sg(du/dt); loss_u = w(sum (V - sg(v_g))^2), loss_v = w(sum (v - sg(v_g))^2),
  w(l) = l / sg((l + norm_eps)^norm_p); loss = mean_B(loss_u + loss_v).
The guidance calls carry no gradient here (sg): the official code does not stop them, but
their only path to the loss is the tangent of du/dt, which V stops, so the gradients agree.
Gradients reach the parameters through u and v only.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jax_meanflow.objective import _bcast, _concrete
from meanflow_common.imf_checks import (PER_SAMPLE_FIELDS, check_guidance_values, check_imf_shapes, check_imf_values,
                                        check_labels)
from meanflow_common.objective_configs import IMFConfig

__all__ = [
    "IMFNoise",
    "IMFOutput",
    "sample_tr",
    "sample_cfg_scale",
    "sample_cfg_interval",
    "sample_imf_noise",
    "guidance",
    "cond_drop",
    "imf_loss",
    "sample_imf",
]

Net = Callable[..., tuple]  # net(z, t, h, omega, t_min, t_max, y) -> (u, v)


@struct.dataclass
class IMFNoise:
    """All randomness of one iMF (or pMF) loss evaluation.

    e: [B, ...] like the data (pMF: times noise_scale); t, r [B] with r <= t; omega [B] >= 1;
    t_min, t_max [B]; fm_mask bool [B] (the r = t samples: they take v_g_fm); drop_mask bool [B]
    (class dropout, the first num_drop samples).
    """

    e: jax.Array
    t: jax.Array
    r: jax.Array
    omega: jax.Array
    t_min: jax.Array
    t_max: jax.Array
    fm_mask: jax.Array
    drop_mask: jax.Array


@struct.dataclass
class IMFOutput:
    """Named outputs of `imf_loss`.

    Data shape [B, ...]: u, du_dt, v (the v head at the drawn omega and interval), v_c (the
    conditional v head at omega', the JVP's z tangent), v_u (unconditional), v_g (the target),
    V = u + (t - r) sg(du_dt). [B]: omega_eff (omega'), loss_u_raw = sum (V - v_g)^2,
    loss_v_raw = sum (v - v_g)^2, loss_u / loss_v (adaptively weighted), loss_per_sample
    (their sum). loss: scalar, the batch mean. Gradients flow through u, v, V and the losses.
    """

    u: jax.Array
    du_dt: jax.Array
    v: jax.Array
    v_c: jax.Array
    v_u: jax.Array
    v_g: jax.Array
    V: jax.Array
    omega_eff: jax.Array
    loss_u_raw: jax.Array
    loss_v_raw: jax.Array
    loss_u: jax.Array
    loss_v: jax.Array
    loss_per_sample: jax.Array
    loss: jax.Array


# ----------------------------------------------------------------------------------
# Drawing the randomness (formulas: meanflow_common.imf_draws)
# ----------------------------------------------------------------------------------


def logit_normal(key, batch: int, cfg, dtype) -> jax.Array:
    return jax.nn.sigmoid(jax.random.normal(key, (batch,), dtype) * cfg.P_std + cfg.P_mean)


def fm_prefix(batch: int, data_proportion: float) -> jax.Array:
    """bool [B]: the first int(batch * data_proportion) samples."""
    return jnp.arange(batch) < int(batch * data_proportion)


def sample_tr(key, batch: int, cfg, dtype=jnp.float32):
    """iMF's (t, r, fm_mask), each [B]: two logit-normal draws, (max, min), then r = t on the
    first floor(B data_proportion). Draws: split(key) -> (t, r)."""
    k_t, k_r = jax.random.split(key)
    t, r = logit_normal(k_t, batch, cfg, dtype), logit_normal(k_r, batch, cfg, dtype)
    t, r = jnp.maximum(t, r), jnp.minimum(t, r)
    fm = fm_prefix(batch, cfg.data_proportion)
    return t, jnp.where(fm, t, r), fm


def sample_cfg_scale(key, batch: int, cfg, dtype=jnp.float32) -> jax.Array:
    """omega [B] in [1, 1 + cfg.cfg_max]: a power law of exponent -cfg_beta (beta 1: log-uniform)."""
    u = jax.random.uniform(key, (batch,), dtype)
    if cfg.cfg_beta == 1.0:
        return jnp.exp(u * jnp.log1p(jnp.asarray(cfg.cfg_max, dtype)))
    log_base = (1.0 - cfg.cfg_beta) * jnp.log1p(jnp.asarray(cfg.cfg_max, dtype))
    return jnp.exp(jnp.log1p(u * jnp.expm1(log_base)) / (1.0 - cfg.cfg_beta))


def sample_cfg_interval(key, batch: int, fm_mask, cfg, dtype=jnp.float32):
    """(t_min, t_max) [B]: U(t_min_low, t_min_high), U(t_max_low, t_max_high); [0, 1] on fm samples.
    Draws: split(key) -> (t_min, t_max)."""
    k_lo, k_hi = jax.random.split(key)
    t_min = cfg.t_min_low + jax.random.uniform(k_lo, (batch,), dtype) * (cfg.t_min_high - cfg.t_min_low)
    t_max = cfg.t_max_low + jax.random.uniform(k_hi, (batch,), dtype) * (cfg.t_max_high - cfg.t_max_low)
    return jnp.where(fm_mask, 0.0, t_min).astype(dtype), jnp.where(fm_mask, 1.0, t_max).astype(dtype)


def prefix_drop_mask(key, batch: int, prob: float) -> jax.Array:
    """bool [B]: num_drop = #{U(0, 1) < prob}, the first num_drop samples True."""
    return jnp.arange(batch) < jnp.sum(jax.random.uniform(key, (batch,)) < prob)


def _check_draw_args(x_shape, cfg, cls):
    if not isinstance(cfg, cls):
        raise TypeError(f"cfg must be a {cls.__name__}, got {type(cfg).__name__}")
    x_shape = tuple(x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x_shape must be [B, ...] with at least 2 axes, got {x_shape}")
    return x_shape


def sample_imf_noise(key, x_shape, cfg: IMFConfig, dtype=jnp.float32) -> IMFNoise:
    """Draw an `IMFNoise` for data of shape x_shape = [B, ...].

    Draws: split(key, 5) -> ((t, r) by `sample_tr`, e, interval, omega, dropout coins).
    """
    x_shape = _check_draw_args(x_shape, cfg, IMFConfig)
    k_tr, k_e, k_int, k_w, k_d = jax.random.split(key, 5)
    b = x_shape[0]
    t, r, fm = sample_tr(k_tr, b, cfg, dtype)
    t_min, t_max = sample_cfg_interval(k_int, b, fm, cfg, dtype)
    return IMFNoise(e=jax.random.normal(k_e, x_shape, dtype), t=t, r=r, omega=sample_cfg_scale(k_w, b, cfg, dtype),
                    t_min=t_min, t_max=t_max, fm_mask=fm, drop_mask=prefix_drop_mask(k_d, b, cfg.class_dropout_prob))


# ----------------------------------------------------------------------------------
# Guidance, dropout, the JVP and the losses (module-level so a negative control can patch one)
# ----------------------------------------------------------------------------------


def effective_omega(omega, t, t_min, t_max):
    """omega' [B]: omega inside the sample's own interval [t_min, t_max], 1 outside."""
    return jnp.where((t >= t_min) & (t <= t_max), omega, jnp.ones_like(omega))


def _v_head(net: Net, z, t, omega, y):
    zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
    return net(z, t, zeros, omega, zeros, ones, y)[1]


def guidance(net: Net, z, t, v_t, y, noise: IMFNoise, null_y):
    """(v_g, v_c', v_u, omega') of the module docstring; v_g before class dropout. No gradient."""
    y_null = jnp.full_like(y, null_y)
    both = _v_head(net, jnp.concatenate([z, z]), jnp.concatenate([t, t]),
                   jnp.concatenate([noise.omega, jnp.ones_like(noise.omega)]), jnp.concatenate([y, y_null]))
    v_c, v_u = jnp.split(jax.lax.stop_gradient(both), 2)
    nd = z.ndim
    v_g_fm = v_t + _bcast(1 - 1 / noise.omega, nd) * (v_c - v_u)
    omega_eff = effective_omega(noise.omega, t, noise.t_min, noise.t_max)
    v_c_eff = jax.lax.stop_gradient(_v_head(net, z, t, omega_eff, y))
    v_g = v_t + _bcast(1 - 1 / omega_eff, nd) * (v_c_eff - v_u)
    return jnp.where(_bcast(noise.fm_mask, nd), v_g_fm, v_g), v_c_eff, v_u, omega_eff


def cond_drop(v_t, v_g, y, drop_mask, null_y):
    """Where drop_mask [B]: y -> null_y and v_g -> v_t. Returns (y_inp [B], v_g)."""
    return jnp.where(drop_mask, jnp.asarray(null_y, y.dtype), y), jnp.where(_bcast(drop_mask, v_g.ndim), v_t, v_g)


def u_v_and_du_dt(net: Net, z, t, r, noise: IMFNoise, y_inp, tangent):
    """(u, du/dt, v): jvp of (z, t, r) -> net(z, t, t - r, omega, t_min, t_max, y_inp) along
    (tangent, 1, 0), v the auxiliary output."""

    def u_fn(z_, t_, r_):
        u, v = net(z_, t_, t_ - r_, noise.omega, noise.t_min, noise.t_max, y_inp)
        return u, v

    return jax.jvp(u_fn, (z, t, r), (tangent, jnp.ones_like(t), jnp.zeros_like(r)), has_aux=True)


def compound_v(u, du_dt, t, r):
    """V = u + (t - r) sg(du/dt)."""
    return u + _bcast(t - r, u.ndim) * jax.lax.stop_gradient(du_dt)


def adaptive_weight(loss, cfg):
    """loss / sg((loss + norm_eps) ** norm_p), per sample."""
    return loss / jax.lax.stop_gradient((loss + cfg.norm_eps) ** cfg.norm_p)


def velocity_losses(V, v, v_g, cfg):
    """(loss_u_raw, loss_v_raw, loss_u, loss_v), each [B]."""
    axes = tuple(range(1, V.ndim))
    lu, lv = jnp.sum((V - v_g) ** 2, axis=axes), jnp.sum((v - v_g) ** 2, axis=axes)
    return lu, lv, adaptive_weight(lu, cfg), adaptive_weight(lv, cfg)


def check_loss_inputs(x, y, noise, null_y):
    """Shapes, dtypes and (when not traced) values of the loss inputs; errors name the field."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be floating point, got dtype {x.dtype}")
    check_imf_shapes(x.shape, jnp.shape(noise.e), {n: jnp.shape(getattr(noise, n)) for n in PER_SAMPLE_FIELDS})
    if noise.e.dtype != x.dtype:
        raise TypeError(f"noise.e has dtype {noise.e.dtype} but x has dtype {x.dtype}")
    for name in ("fm_mask", "drop_mask"):
        if jnp.asarray(getattr(noise, name)).dtype != jnp.bool_:
            raise TypeError(f"noise.{name} must be bool, got {jnp.asarray(getattr(noise, name)).dtype}")
    check_labels(jnp.shape(y), x.shape[0])
    if not jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        raise TypeError(f"y must be integer labels, got dtype {jnp.asarray(y).dtype}")
    if null_y is None:
        raise ValueError("the iMF / pMF loss needs null_y (the null label, num_classes); got None")
    values = [_concrete(getattr(noise, n)) for n in ("t", "r", "omega", "t_min", "t_max", "fm_mask")]
    if all(v is not None for v in values):
        check_imf_values(*values)


def cast_noise(noise, dtype):
    """The float per-sample fields in `dtype` (the data's)."""
    return noise.replace(**{n: jnp.asarray(getattr(noise, n), dtype) for n in ("t", "r", "omega", "t_min", "t_max")})


def guided_terms(net: Net, z, v_t, y, noise: IMFNoise, cfg, null_y) -> dict[str, Any]:
    """Everything of `IMFOutput` but loss_per_sample and loss, for velocity-valued `net`.
    Shared by iMF and pMF (which passes its x-to-velocity converted network)."""
    v_g, v_c, v_u, omega_eff = guidance(net, z, noise.t, v_t, y, noise, null_y)
    y_inp, v_g = cond_drop(v_t, v_g, y, noise.drop_mask, null_y)
    v_g = jax.lax.stop_gradient(v_g)
    u, du_dt, v = u_v_and_du_dt(net, z, noise.t, noise.r, noise, y_inp, v_c)
    V = compound_v(u, du_dt, noise.t, noise.r)
    lu_raw, lv_raw, lu, lv = velocity_losses(V, v, v_g, cfg)
    return dict(u=u, du_dt=du_dt, v=v, v_c=v_c, v_u=v_u, v_g=v_g, V=V, omega_eff=omega_eff, loss_u_raw=lu_raw,
                loss_v_raw=lv_raw, loss_u=lu, loss_v=lv)


def imf_loss(net: Net, x, y, noise: IMFNoise, cfg: IMFConfig, null_y) -> IMFOutput:
    """The iMF loss on data x [B, ...] with labels y int [B] (module docstring).

    net(z, t, h, omega, t_min, t_max, y) -> (u, v); null_y: the null label (num_classes).
    """
    if not isinstance(cfg, IMFConfig):
        raise TypeError(f"imf_loss needs an IMFConfig, got {type(cfg).__name__}")
    x = jnp.asarray(x)
    check_loss_inputs(x, y, noise, null_y)
    noise = cast_noise(noise, x.dtype)
    tb = _bcast(noise.t, x.ndim)
    z = (1 - tb) * x + tb * noise.e
    terms = guided_terms(net, z, noise.e - x, jnp.asarray(y), noise, cfg, null_y)
    per_sample = terms["loss_u"] + terms["loss_v"]
    return IMFOutput(**terms, loss_per_sample=per_sample, loss=jnp.mean(per_sample))


# ----------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------


def _per_sample(value, batch: int, dtype, name: str):
    a = jnp.asarray(value, dtype)
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != batch):
        raise ValueError(f"{name} must be a scalar or [B] = ({batch},), got shape {a.shape}")
    return jnp.broadcast_to(a, (batch,))


def guided_sample(net: Net, z, y, cfg, num_steps=None, omega=None, t_min=None, t_max=None):
    """Run z from t = 1 to 0 on linspace(1, 0, N + 1): z <- z - (t - r) u(z, t, t - r, omega,
    t_min, t_max, y), u the network's first output. omega / interval / N: the arguments, or
    cfg.sample_omega / sample_t_min / sample_t_max / num_steps."""
    z = jnp.asarray(z)
    b = z.shape[0]
    n = cfg.num_steps if num_steps is None else int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {n}")
    w = _per_sample(cfg.sample_omega if omega is None else omega, b, z.dtype, "omega")
    lo = _per_sample(cfg.sample_t_min if t_min is None else t_min, b, z.dtype, "t_min")
    hi = _per_sample(cfg.sample_t_max if t_max is None else t_max, b, z.dtype, "t_max")
    w_np, lo_np, hi_np = _concrete(w), _concrete(lo), _concrete(hi)
    if w_np is not None and lo_np is not None and hi_np is not None:
        check_guidance_values(w_np, lo_np, hi_np)
    check_labels(jnp.shape(y), b)
    steps = np.linspace(1.0, 0.0, n + 1)  # float64 grid, cast per step: the torch twin's
    for i in range(n):
        t, r = jnp.full((b,), steps[i], z.dtype), jnp.full((b,), steps[i + 1], z.dtype)
        u = net(z, t, t - r, w, lo, hi, y)[0]
        z = z - _bcast(t - r, z.ndim) * u
    return z


def sample_imf(net: Net, e, y, cfg: IMFConfig, num_steps=None, omega=None, t_min=None, t_max=None):
    """iMF generation from noise e ~ N(0, I) [B, ...] with labels y int [B] (1-NFE by default)."""
    return guided_sample(net, e, y, cfg, num_steps, omega, t_min, t_max)
