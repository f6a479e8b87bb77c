"""The pixel MeanFlow (pMF) objective, JAX reference (official pMF `pmf.py` semantics).

The iMF objective (`jax_meanflow.imf_objective`, whose guidance, dropout, JVP and losses are
reused unchanged) with these differences:
- e = noise_scale N(0, I); z = (1 - t) x + t e; v_t = (z - x) / clip(t, t_clip_min, 1);
- the network predicts clean images: net(z, t, h, omega, t_min, t_max, y) -> (x_u, x_v), and
  the loss converts both, u = (z - x_u) / clip(t, t_clip_min, 1), v likewise. The conversion is
  inside the function the JVP differentiates (the official pmfDiT does it at the end of its
  own forward; a network returning x-predictions plus this conversion is the same function);
- (t, r): with tr_uniform, a sample's two draws are replaced by U(0, 1) ones with probability
  tr_uniform_prob; then r = t on the fm prefix, THEN (max, min) (iMF takes max/min first);
- optional perceptual terms on pred_x = z - t u against x: per-sample distances from the
  user's hooks, zeroed where t >= perceptual_max_t, each adaptively weighted and scaled by
  its lambda, added to loss_u + loss_v before the batch mean.

Perceptual hooks: `PerceptualHooks(lpips=fn, convnext=fn)`, each fn(pred_x, x) -> [B]
distances (data layout [B, H, W, C]). The official code feeds both distances a paired random
resized crop to 224 x 224 (cubic, antialiased) drawn from the step's key; a hook that wants it
closes over its own crop. `jax_meanflow.convnext.convnext_feature_distance` builds the
ConvNeXt hook; LPIPS is the user's (e.g. the `lpips_j` package the official code uses).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import struct

from jax_meanflow.imf_objective import (
    Net,
    _check_draw_args,
    adaptive_weight,
    cast_noise,
    check_loss_inputs,
    fm_prefix,
    guided_sample,
    guided_terms,
    logit_normal,
    prefix_drop_mask,
    sample_cfg_interval,
    sample_cfg_scale,
)
from jax_meanflow.objective import _bcast
from meanflow_common.imf_checks import check_perceptual_hooks
from meanflow_common.objective_configs import PMFConfig

__all__ = [
    "PMFNoise",
    "PMFOutput",
    "PerceptualHooks",
    "sample_tr",
    "sample_pmf_noise",
    "x_to_velocity",
    "velocity_net",
    "pmf_loss",
    "sample_pmf",
]

Hook = Callable[[jax.Array, jax.Array], jax.Array]  # (pred_x, x) -> [B]


@struct.dataclass
class PMFNoise:
    """All randomness of one pMF loss evaluation; the fields of `IMFNoise`, with
    e = noise_scale N(0, I) [B, ...]."""

    e: jax.Array
    t: jax.Array
    r: jax.Array
    omega: jax.Array
    t_min: jax.Array
    t_max: jax.Array
    fm_mask: jax.Array
    drop_mask: jax.Array


@struct.dataclass
class PMFOutput:
    """Named outputs of `pmf_loss`: those of `IMFOutput` (u, v, v_c, v_u, v_g, V in velocity
    units, converted from the network's x-predictions) and

    pred_x [B, ...] = z - t u (the perceptual input; gradient through u);
    perceptual_mask bool [B] (t < perceptual_max_t);
    lpips_dist, convnext_dist [B]: the hooks' distances, zero where masked or switched off;
    loss_lpips, loss_convnext [B]: lambda * adaptive weight of each; loss_aux [B]: their sum.
    loss_per_sample = loss_u + loss_v + loss_aux; loss = its batch mean.
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
    pred_x: jax.Array
    perceptual_mask: jax.Array
    lpips_dist: jax.Array
    convnext_dist: jax.Array
    loss_lpips: jax.Array
    loss_convnext: jax.Array
    loss_aux: jax.Array
    loss_per_sample: jax.Array
    loss: jax.Array


@dataclass(frozen=True)
class PerceptualHooks:
    """The perceptual distances of pMF: each None (term off) or fn(pred_x, x) -> [B]."""

    lpips: Optional[Hook] = None
    convnext: Optional[Hook] = None


# ----------------------------------------------------------------------------------
# Drawing the randomness (formulas: meanflow_common.imf_draws.pmf_tr)
# ----------------------------------------------------------------------------------


def sample_tr(key, batch: int, cfg: PMFConfig, dtype=jnp.float32):
    """pMF's (t, r, fm_mask), each [B]. Draws: split(key, 5) -> (t, r, uniform coins,
    uniform t, uniform r); the last three are used only with cfg.tr_uniform."""
    k_t, k_r, k_c, k_tu, k_ru = jax.random.split(key, 5)
    t, r = logit_normal(k_t, batch, cfg, dtype), logit_normal(k_r, batch, cfg, dtype)
    if cfg.tr_uniform:
        mask = jax.random.uniform(k_c, (batch,), dtype) < cfg.tr_uniform_prob
        t = jnp.where(mask, jax.random.uniform(k_tu, (batch,), dtype), t)
        r = jnp.where(mask, jax.random.uniform(k_ru, (batch,), dtype), r)
    fm = fm_prefix(batch, cfg.data_proportion)
    r = jnp.where(fm, t, r)
    return jnp.maximum(t, r), jnp.minimum(t, r), fm


def sample_pmf_noise(key, x_shape, cfg: PMFConfig, dtype=jnp.float32) -> PMFNoise:
    """Draw a `PMFNoise` for data of shape x_shape = [B, ...].

    Draws: split(key, 5) -> ((t, r) by `sample_tr`, e, interval, omega, dropout coins).
    """
    x_shape = _check_draw_args(x_shape, cfg, PMFConfig)
    k_tr, k_e, k_int, k_w, k_d = jax.random.split(key, 5)
    b = x_shape[0]
    t, r, fm = sample_tr(k_tr, b, cfg, dtype)
    t_min, t_max = sample_cfg_interval(k_int, b, fm, cfg, dtype)
    e = cfg.noise_scale * jax.random.normal(k_e, x_shape, dtype)
    return PMFNoise(e=e, t=t, r=r, omega=sample_cfg_scale(k_w, b, cfg, dtype), t_min=t_min, t_max=t_max,
                    fm_mask=fm, drop_mask=prefix_drop_mask(k_d, b, cfg.class_dropout_prob))


# ----------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------


def x_to_velocity(z, x_pred, t, cfg: PMFConfig):
    """(z - x_pred) / clip(t, t_clip_min, 1): a clean-image prediction as a velocity."""
    return (z - x_pred) / _bcast(jnp.clip(t, cfg.t_clip_min, 1.0), z.ndim)


def velocity_net(net: Net, cfg: PMFConfig) -> Net:
    """The x-predicting `net` as a velocity network (both outputs converted)."""

    def vel(z, t, h, omega, t_min, t_max, y):
        x_u, x_v = net(z, t, h, omega, t_min, t_max, y)
        return x_to_velocity(z, x_u, t, cfg), x_to_velocity(z, x_v, t, cfg)

    return vel


def perceptual_mask(t, cfg: PMFConfig):
    """bool [B]: the samples whose perceptual terms count (t < perceptual_max_t)."""
    return t < cfg.perceptual_max_t


def _check_hooks(cfg: PMFConfig, hooks: Optional[PerceptualHooks]) -> PerceptualHooks:
    return check_perceptual_hooks(cfg, PerceptualHooks() if hooks is None else hooks, PerceptualHooks)


def _distance(fn: Optional[Hook], pred_x, x, mask, name: str):
    if fn is None:
        return jnp.zeros(mask.shape, pred_x.dtype)
    d = jnp.asarray(fn(pred_x, x))
    if d.shape != mask.shape:
        raise ValueError(f"the {name} hook must return per-sample distances [B] = {mask.shape}, got {d.shape}")
    return jnp.where(mask, d, jnp.zeros_like(d))


def perceptual_terms(pred_x, x, t, cfg: PMFConfig, hooks: PerceptualHooks):
    """(mask, lpips_dist, convnext_dist, loss_lpips, loss_convnext), each [B]."""
    mask = perceptual_mask(t, cfg)
    d_l = _distance(hooks.lpips, pred_x, x, mask, "lpips")
    d_c = _distance(hooks.convnext, pred_x, x, mask, "convnext")
    return mask, d_l, d_c, adaptive_weight(d_l, cfg) * cfg.lpips_lambda, adaptive_weight(d_c, cfg) * cfg.convnext_lambda


def pmf_loss(net: Net, x, y, noise: PMFNoise, cfg: PMFConfig, null_y,
             perceptual: Optional[PerceptualHooks] = None) -> PMFOutput:
    """The pMF loss on images x [B, H, W, C] with labels y int [B] (module docstring).

    net(z, t, h, omega, t_min, t_max, y) -> (x_u, x_v), clean-image predictions; null_y: the
    null label; perceptual: the hooks cfg.lpips / cfg.convnext switch on.
    """
    if not isinstance(cfg, PMFConfig):
        raise TypeError(f"pmf_loss needs a PMFConfig, got {type(cfg).__name__}")
    hooks = _check_hooks(cfg, perceptual)
    x = jnp.asarray(x)
    check_loss_inputs(x, y, noise, null_y)
    noise = cast_noise(noise, x.dtype)
    tb = _bcast(noise.t, x.ndim)
    z = (1 - tb) * x + tb * noise.e
    terms = guided_terms(velocity_net(net, cfg), z, x_to_velocity(z, x, noise.t, cfg), jnp.asarray(y), noise, cfg,
                         null_y)
    pred_x = z - tb * terms["u"]
    mask, d_l, d_c, l_l, l_c = perceptual_terms(pred_x, x, noise.t, cfg, hooks)
    per_sample = terms["loss_u"] + terms["loss_v"] + l_l + l_c
    return PMFOutput(**terms, pred_x=pred_x, perceptual_mask=mask, lpips_dist=d_l, convnext_dist=d_c, loss_lpips=l_l,
                     loss_convnext=l_c, loss_aux=l_l + l_c, loss_per_sample=per_sample, loss=jnp.mean(per_sample))


def sample_pmf(net: Net, e, y, cfg: PMFConfig, num_steps=None, omega=None, t_min=None, t_max=None):
    """pMF generation from e ~ N(0, I) [B, H, W, C] (scaled here by cfg.noise_scale) with labels
    y int [B]: the iMF sampler on the converted network. Returns the images at t = 0."""
    return guided_sample(velocity_net(net, cfg), cfg.noise_scale * jnp.asarray(e), y, cfg, num_steps, omega, t_min,
                         t_max)
