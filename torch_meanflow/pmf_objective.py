"""The pixel MeanFlow (pMF) objective in PyTorch, twin of `jax_meanflow.pmf_objective`.

Same semantics, names and named outputs as the JAX reference (formulas and the perceptual
hook contract in its module docstring). Images are [B, C, H, W] here; a hook is
fn(pred_x, x) -> [B] on that layout. `torch_meanflow.convnext.convnext_feature_distance`
builds the ConvNeXt hook; LPIPS is the user's (e.g. the `lpips` package).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from meanflow_common.imf_checks import check_perceptual_hooks
from meanflow_common.objective_configs import PMFConfig
from torch_meanflow.imf_objective import (
    IMFNoise,
    Net,
    _check_draw_args,
    _finish_draws,
    _uniform,
    adaptive_weight,
    check_loss_inputs,
    fm_prefix,
    guided_sample,
    guided_terms,
    logit_normal,
)
from torch_meanflow.objective import JvpOptions, _bcast, current_jvp_options

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

Hook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pred_x, x) -> [B]


@dataclass
class PMFNoise(IMFNoise):
    """All randomness of one pMF loss evaluation: `IMFNoise`'s fields, e = noise_scale N(0, I)."""


@dataclass
class PMFOutput:
    """Named outputs of `pmf_loss` (the JAX twin's names and shapes). Gradients: u, v, V,
    pred_x and the losses; the others are detached."""

    u: torch.Tensor
    du_dt: torch.Tensor
    v: torch.Tensor
    v_c: torch.Tensor
    v_u: torch.Tensor
    v_g: torch.Tensor
    V: torch.Tensor
    omega_eff: torch.Tensor
    loss_u_raw: torch.Tensor
    loss_v_raw: torch.Tensor
    loss_u: torch.Tensor
    loss_v: torch.Tensor
    pred_x: torch.Tensor
    perceptual_mask: torch.Tensor
    lpips_dist: torch.Tensor
    convnext_dist: torch.Tensor
    loss_lpips: torch.Tensor
    loss_convnext: torch.Tensor
    loss_aux: torch.Tensor
    loss_per_sample: torch.Tensor
    loss: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PerceptualHooks:
    """The perceptual distances of pMF: each None (term off) or fn(pred_x, x) -> [B]."""

    lpips: Optional[Hook] = None
    convnext: Optional[Hook] = None


def sample_tr(batch: int, cfg: PMFConfig, generator=None, device=None, dtype=torch.float32):
    """pMF's (t, r, fm_mask), each [B]. Draws: t, r (normal); with cfg.tr_uniform then coins,
    uniform t, uniform r. Formula: `meanflow_common.imf_draws.pmf_tr`."""
    t, r = logit_normal(batch, cfg, generator, device, dtype), logit_normal(batch, cfg, generator, device, dtype)
    if cfg.tr_uniform:
        mask = _uniform(batch, generator, device, dtype) < cfg.tr_uniform_prob
        t = torch.where(mask, _uniform(batch, generator, device, dtype), t)
        r = torch.where(mask, _uniform(batch, generator, device, dtype), r)
    fm = fm_prefix(batch, cfg.data_proportion, t.device)
    r = torch.where(fm, t, r)
    return torch.maximum(t, r), torch.minimum(t, r), fm


def sample_pmf_noise(x_shape, cfg: PMFConfig, generator=None, device=None, dtype=torch.float32) -> PMFNoise:
    """Draw a `PMFNoise` for data x_shape = [B, ...]. Order: (t, r) by `sample_tr`, e, t_min,
    t_max, omega, dropout coins."""
    x_shape = _check_draw_args(x_shape, cfg, PMFConfig)
    t, r, fm = sample_tr(x_shape[0], cfg, generator, device, dtype)
    e = cfg.noise_scale * torch.randn(x_shape, generator=generator, device=device, dtype=dtype)
    return _finish_draws(PMFNoise, x_shape, cfg, t, r, fm, e, generator, device, dtype)


def x_to_velocity(z, x_pred, t, cfg: PMFConfig):
    """(z - x_pred) / clip(t, t_clip_min, 1): a clean-image prediction as a velocity."""
    return (z - x_pred) / _bcast(torch.clamp(t, cfg.t_clip_min, 1.0), z)


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
        return torch.zeros(mask.shape, dtype=pred_x.dtype, device=pred_x.device)
    d = fn(pred_x, x)
    if tuple(d.shape) != tuple(mask.shape):
        raise ValueError(f"the {name} hook must return per-sample distances [B] = {tuple(mask.shape)}, "
                         f"got {tuple(d.shape)}")
    return torch.where(mask, d, torch.zeros_like(d))


def perceptual_terms(pred_x, x, t, cfg: PMFConfig, hooks: PerceptualHooks):
    """(mask, lpips_dist, convnext_dist, loss_lpips, loss_convnext), each [B]."""
    mask = perceptual_mask(t, cfg)
    d_l = _distance(hooks.lpips, pred_x, x, mask, "lpips")
    d_c = _distance(hooks.convnext, pred_x, x, mask, "convnext")
    return mask, d_l, d_c, adaptive_weight(d_l, cfg) * cfg.lpips_lambda, adaptive_weight(d_c, cfg) * cfg.convnext_lambda


def pmf_loss(net: Net, x, y, noise: PMFNoise, cfg: PMFConfig, null_y, perceptual: Optional[PerceptualHooks] = None,
             jvp: JvpOptions | None = None) -> PMFOutput:
    """The pMF loss on images x [B, C, H, W] with labels y int [B]; net returns clean-image
    predictions (x_u, x_v); `jvp` as in `torch_meanflow.imf_objective.imf_loss`."""
    if not isinstance(cfg, PMFConfig):
        raise TypeError(f"pmf_loss needs a PMFConfig, got {type(cfg).__name__}")
    hooks = _check_hooks(cfg, perceptual)
    check_loss_inputs(x, y, noise, null_y)
    options = current_jvp_options() if jvp is None else jvp
    tb = _bcast(noise.t, x)
    z = (1 - tb) * x + tb * noise.e
    terms = guided_terms(velocity_net(net, cfg), z, x_to_velocity(z, x, noise.t, cfg), y, noise, cfg, null_y,
                         options)
    pred_x = z - tb * terms["u"]
    mask, d_l, d_c, l_l, l_c = perceptual_terms(pred_x, x, noise.t, cfg, hooks)
    per_sample = terms["loss_u"] + terms["loss_v"] + l_l + l_c
    return PMFOutput(**terms, pred_x=pred_x, perceptual_mask=mask, lpips_dist=d_l, convnext_dist=d_c, loss_lpips=l_l,
                     loss_convnext=l_c, loss_aux=l_l + l_c, loss_per_sample=per_sample, loss=per_sample.mean())


def sample_pmf(net: Net, e, y, cfg: PMFConfig, num_steps=None, omega=None, t_min=None, t_max=None):
    """pMF generation from e ~ N(0, I) [B, C, H, W] (scaled here by cfg.noise_scale)."""
    return guided_sample(velocity_net(net, cfg), cfg.noise_scale * e, y, cfg, num_steps, omega, t_min, t_max)
