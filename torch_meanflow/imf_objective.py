"""The improved MeanFlow (iMF) objective in PyTorch, twin of `jax_meanflow.imf_objective`.

Same semantics, names and named outputs as the JAX reference (its module docstring has the
formulas). The network enters only through
    net(z, t, h, omega, t_min, t_max, y) -> (u, v)
with z, u, v [B, C, H, W] (any [B, ...]), t, h, omega, t_min, t_max [B], y int [B] (null
label `null_y` = num_classes). The randomness is an explicit `IMFNoise`; `sample_imf_noise`
draws one from a `torch.Generator` (order: `meanflow_common.imf_draws`).

du/dt comes from one forward-mode JVP with `torch_meanflow.objective`'s engines (`JvpOptions`:
"rules" by default, or plain `torch.func.jvp`), autocast off. u and the auxiliary v come out
of the same evaluation: the JVP'd function returns stack([u, v]) and only u's tangent is used.
The guidance calls run under no_grad (in the reference they only reach the loss through the
stopped du/dt). Gradients reach the parameters through u and v only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from meanflow_common.imf_checks import (PER_SAMPLE_FIELDS, check_guidance_values, check_imf_shapes, check_imf_values,
                                        check_labels)
from meanflow_common.objective_configs import IMFConfig
from torch_meanflow.objective import JvpOptions, _bcast, _jvp, current_jvp_options

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
_FLOATS = ("t", "r", "omega", "t_min", "t_max")


@dataclass
class IMFNoise:
    """All randomness of one iMF loss evaluation (fields: `jax_meanflow.imf_objective.IMFNoise`)."""

    e: torch.Tensor
    t: torch.Tensor
    r: torch.Tensor
    omega: torch.Tensor
    t_min: torch.Tensor
    t_max: torch.Tensor
    fm_mask: torch.Tensor
    drop_mask: torch.Tensor

    def to(self, device=None, dtype=None):
        """Move to `device` and cast the float fields to `dtype` (the masks stay bool)."""
        moved = {f.name: getattr(self, f.name).to(device=device) for f in fields(self)}
        for name in ("e",) + _FLOATS:
            moved[name] = moved[name].to(dtype=dtype)
        return type(self)(**moved)


@dataclass
class IMFOutput:
    """Named outputs of `imf_loss` (the JAX twin's names and shapes). u, v, V, loss_u,
    loss_v, loss_per_sample and loss carry gradients; the others are detached."""

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
    loss_per_sample: torch.Tensor
    loss: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------
# Drawing the randomness (formulas: meanflow_common.imf_draws)
# ----------------------------------------------------------------------------------


def logit_normal(batch: int, cfg, generator, device, dtype) -> torch.Tensor:
    return torch.sigmoid(torch.randn(batch, generator=generator, device=device, dtype=dtype) * cfg.P_std + cfg.P_mean)


def _uniform(batch: int, generator, device, dtype) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device, dtype=dtype)


def fm_prefix(batch: int, data_proportion: float, device=None) -> torch.Tensor:
    """bool [B]: the first int(batch * data_proportion) samples."""
    return torch.arange(batch, device=device) < int(batch * data_proportion)


def sample_tr(batch: int, cfg, generator=None, device=None, dtype=torch.float32):
    """iMF's (t, r, fm_mask), each [B]: two logit-normal draws (t, then r), (max, min), then
    r = t on the first floor(B data_proportion)."""
    t, r = logit_normal(batch, cfg, generator, device, dtype), logit_normal(batch, cfg, generator, device, dtype)
    t, r = torch.maximum(t, r), torch.minimum(t, r)
    fm = fm_prefix(batch, cfg.data_proportion, t.device)
    return t, torch.where(fm, t, r), fm


def sample_cfg_scale(batch: int, cfg, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """omega [B] in [1, 1 + cfg.cfg_max] from one uniform draw (formula: imf_draws.cfg_scale)."""
    u = _uniform(batch, generator, device, dtype)
    cap = torch.tensor(cfg.cfg_max, device=u.device, dtype=dtype)
    if cfg.cfg_beta == 1.0:
        return torch.exp(u * torch.log1p(cap))
    log_base = (1.0 - cfg.cfg_beta) * torch.log1p(cap)
    return torch.exp(torch.log1p(u * torch.expm1(log_base)) / (1.0 - cfg.cfg_beta))


def sample_cfg_interval(batch: int, fm_mask, cfg, generator=None, device=None, dtype=torch.float32):
    """(t_min, t_max) [B]: uniform draws (t_min, then t_max) on the config's ranges; [0, 1] on fm."""
    t_min = cfg.t_min_low + _uniform(batch, generator, device, dtype) * (cfg.t_min_high - cfg.t_min_low)
    t_max = cfg.t_max_low + _uniform(batch, generator, device, dtype) * (cfg.t_max_high - cfg.t_max_low)
    return torch.where(fm_mask, torch.zeros_like(t_min), t_min), torch.where(fm_mask, torch.ones_like(t_max), t_max)


def prefix_drop_mask(batch: int, prob: float, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """bool [B]: num_drop = #{U(0, 1) < prob}, the first num_drop samples True."""
    coins = _uniform(batch, generator, device, dtype)
    return torch.arange(batch, device=coins.device) < (coins < prob).sum()


def _check_draw_args(x_shape, cfg, cls):
    if not isinstance(cfg, cls):
        raise TypeError(f"cfg must be a {cls.__name__}, got {type(cfg).__name__}")
    x_shape = tuple(x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x_shape must be [B, ...] with at least 2 axes, got {x_shape}")
    return x_shape


def _finish_draws(cls, x_shape, cfg, t, r, fm, e, generator, device, dtype):
    b = x_shape[0]
    t_min, t_max = sample_cfg_interval(b, fm, cfg, generator, device, dtype)
    omega = sample_cfg_scale(b, cfg, generator, device, dtype)
    drop = prefix_drop_mask(b, cfg.class_dropout_prob, generator, device, dtype)
    return cls(e=e, t=t, r=r, omega=omega, t_min=t_min, t_max=t_max, fm_mask=fm, drop_mask=drop)


def sample_imf_noise(x_shape, cfg: IMFConfig, generator=None, device=None, dtype=torch.float32) -> IMFNoise:
    """Draw an `IMFNoise` for data x_shape = [B, ...]. Order: t, r, e, t_min, t_max, omega, coins."""
    x_shape = _check_draw_args(x_shape, cfg, IMFConfig)
    t, r, fm = sample_tr(x_shape[0], cfg, generator, device, dtype)
    e = torch.randn(x_shape, generator=generator, device=device, dtype=dtype)
    return _finish_draws(IMFNoise, x_shape, cfg, t, r, fm, e, generator, device, dtype)


# ----------------------------------------------------------------------------------
# Guidance, dropout, the JVP and the losses (module-level so a negative control can patch one)
# ----------------------------------------------------------------------------------


def effective_omega(omega, t, t_min, t_max):
    """omega' [B]: omega inside the sample's own interval [t_min, t_max], 1 outside."""
    return torch.where((t >= t_min) & (t <= t_max), omega, torch.ones_like(omega))


def _v_head(net: Net, z, t, omega, y):
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    return net(z, t, zeros, omega, zeros, ones, y)[1]


def guidance(net: Net, z, t, v_t, y, noise, null_y):
    """(v_g, v_c', v_u, omega'), v_g before class dropout; no gradient (JAX twin's docstring)."""
    with torch.no_grad():
        y_null = torch.full_like(y, null_y)
        both = _v_head(net, torch.cat([z, z]), torch.cat([t, t]),
                       torch.cat([noise.omega, torch.ones_like(noise.omega)]), torch.cat([y, y_null]))
        v_c, v_u = both.chunk(2)
        v_g_fm = v_t + _bcast(1 - 1 / noise.omega, z) * (v_c - v_u)
        omega_eff = effective_omega(noise.omega, t, noise.t_min, noise.t_max)
        v_c_eff = _v_head(net, z, t, omega_eff, y)
        v_g = v_t + _bcast(1 - 1 / omega_eff, z) * (v_c_eff - v_u)
        return torch.where(_bcast(noise.fm_mask, z), v_g_fm, v_g), v_c_eff, v_u, omega_eff


def cond_drop(v_t, v_g, y, drop_mask, null_y):
    """Where drop_mask [B]: y -> null_y and v_g -> v_t. Returns (y_inp [B], v_g)."""
    y_inp = torch.where(drop_mask, torch.full_like(y, null_y), y)
    return y_inp, torch.where(_bcast(drop_mask, v_g), v_t, v_g)


def u_v_and_du_dt(net: Net, z, t, r, noise, y_inp, tangent, options: JvpOptions):
    """(u, du/dt, v): the JVP of (z, t, r) -> net(z, t, t - r, omega, t_min, t_max, y_inp) along
    (tangent, 1, 0); v from the same evaluation."""

    def fn(z_, t_, r_):
        u, v = net(z_, t_, t_ - r_, noise.omega, noise.t_min, noise.t_max, y_inp)
        return torch.stack([u, v])

    out, d_out = _jvp(fn, (z, t, r), (tangent, torch.ones_like(t), torch.zeros_like(r)), options)
    return out[0], d_out[0], out[1]


def compound_v(u, du_dt, t, r):
    """V = u + (t - r) sg(du/dt)."""
    return u + _bcast(t - r, u) * du_dt.detach()


def adaptive_weight(loss, cfg):
    """loss / sg((loss + norm_eps) ** norm_p), per sample."""
    return loss / (loss.detach() + cfg.norm_eps) ** cfg.norm_p


def velocity_losses(V, v, v_g, cfg):
    """(loss_u_raw, loss_v_raw, loss_u, loss_v), each [B]."""
    dims = tuple(range(1, V.dim()))
    lu, lv = ((V - v_g) ** 2).sum(dim=dims), ((v - v_g) ** 2).sum(dim=dims)
    return lu, lv, adaptive_weight(lu, cfg), adaptive_weight(lv, cfg)


def check_loss_inputs(x, y, noise, null_y):
    """Shapes, dtypes and values of the loss inputs; errors name the field (as the JAX twin)."""
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be floating point, got dtype {getattr(x, 'dtype', type(x))}")
    check_imf_shapes(x.shape, noise.e.shape, {n: getattr(noise, n).shape for n in PER_SAMPLE_FIELDS})
    for name in ("e",) + _FLOATS:
        if getattr(noise, name).dtype != x.dtype:
            raise TypeError(f"noise.{name} has dtype {getattr(noise, name).dtype} but x has dtype {x.dtype}; "
                            "use noise.to(dtype=x.dtype)")
    for name in ("fm_mask", "drop_mask"):
        if getattr(noise, name).dtype != torch.bool:
            raise TypeError(f"noise.{name} must be bool, got {getattr(noise, name).dtype}")
    if not torch.is_tensor(y):
        raise TypeError(f"y must be a tensor of integer labels, got {type(y).__name__}")
    check_labels(y.shape, x.shape[0])
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"y must be integer labels, got dtype {y.dtype}")
    if null_y is None:
        raise ValueError("the iMF / pMF loss needs null_y (the null label, num_classes); got None")
    if not torch.compiler.is_compiling():
        check_imf_values(*(getattr(noise, n).detach().cpu().double().numpy() for n in _FLOATS),
                         noise.fm_mask.detach().cpu().numpy())


def guided_terms(net: Net, z, v_t, y, noise, cfg, null_y, options: JvpOptions) -> dict:
    """Everything of `IMFOutput` but loss_per_sample and loss, for velocity-valued `net`
    (shared with pMF, which passes its converted network)."""
    v_g, v_c, v_u, omega_eff = guidance(net, z, noise.t, v_t, y, noise, null_y)
    y_inp, v_g = cond_drop(v_t, v_g, y, noise.drop_mask, null_y)
    v_g = v_g.detach()
    with torch.autocast(z.device.type, enabled=False):
        u, du_dt, v = u_v_and_du_dt(net, z, noise.t, noise.r, noise, y_inp, v_c, options)
    V = compound_v(u, du_dt, noise.t, noise.r)
    lu_raw, lv_raw, lu, lv = velocity_losses(V, v, v_g, cfg)
    return dict(u=u, du_dt=du_dt.detach(), v=v, v_c=v_c, v_u=v_u, v_g=v_g, V=V, omega_eff=omega_eff,
                loss_u_raw=lu_raw, loss_v_raw=lv_raw, loss_u=lu, loss_v=lv)


def imf_loss(net: Net, x, y, noise: IMFNoise, cfg: IMFConfig, null_y, jvp: JvpOptions | None = None) -> IMFOutput:
    """The iMF loss on data x [B, ...] with labels y int [B]; `jvp`: the JVP engine and attention
    (None: those of the enclosing `jvp_engine` / `jvp_attention` blocks)."""
    if not isinstance(cfg, IMFConfig):
        raise TypeError(f"imf_loss needs an IMFConfig, got {type(cfg).__name__}")
    check_loss_inputs(x, y, noise, null_y)
    options = current_jvp_options() if jvp is None else jvp
    tb = _bcast(noise.t, x)
    z = (1 - tb) * x + tb * noise.e
    terms = guided_terms(net, z, noise.e - x, y, noise, cfg, null_y, options)
    per_sample = terms["loss_u"] + terms["loss_v"]
    return IMFOutput(**terms, loss_per_sample=per_sample, loss=per_sample.mean())


# ----------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------


def _per_sample(value, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    a = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if a.dim() > 1 or (a.dim() == 1 and a.shape[0] != batch):
        raise ValueError(f"{name} must be a scalar or [B] = ({batch},), got shape {tuple(a.shape)}")
    return a.expand(batch)


def guided_sample(net: Net, z, y, cfg, num_steps=None, omega=None, t_min=None, t_max=None):
    """z from t = 1 to 0 on linspace(1, 0, N + 1), without gradient (JAX twin's docstring)."""
    b = z.shape[0]
    n = cfg.num_steps if num_steps is None else int(num_steps)
    if n < 1:
        raise ValueError(f"num_steps must be >= 1, got {n}")
    w = _per_sample(cfg.sample_omega if omega is None else omega, b, z, "omega")
    lo = _per_sample(cfg.sample_t_min if t_min is None else t_min, b, z, "t_min")
    hi = _per_sample(cfg.sample_t_max if t_max is None else t_max, b, z, "t_max")
    check_guidance_values(*(a.detach().cpu().double().numpy() for a in (w, lo, hi)))
    check_labels(y.shape, b)
    steps = np.linspace(1.0, 0.0, n + 1)
    with torch.no_grad():
        for i in range(n):
            t = torch.full((b,), float(steps[i]), dtype=z.dtype, device=z.device)
            r = torch.full((b,), float(steps[i + 1]), dtype=z.dtype, device=z.device)
            u = net(z, t, t - r, w, lo, hi, y)[0]
            z = z - _bcast(t - r, z) * u
    return z


def sample_imf(net: Net, e, y, cfg: IMFConfig, num_steps=None, omega=None, t_min=None, t_max=None):
    """iMF generation from noise e ~ N(0, I) [B, ...] with labels y int [B] (1-NFE by default)."""
    return guided_sample(net, e, y, cfg, num_steps, omega, t_min, t_max)
