"""The MeanFlow objective in PyTorch, twin of `jax_meanflow.objective`.

The loss is a pure function of explicit randomness: `sample_noise` draws a `MeanFlowNoise`
(e, t, r, drop_mask) from a `torch.Generator`; `meanflow_loss` consumes it. The network is
reached only through `u_fn(z, t, h, y, train) -> u`, with z and u of the data's shape and
t, h of shape [B].

Conventions (the JAX reference's): z_t = (1 - t) x + t e, v = e - x, t = 1 is noise,
0 <= r <= t <= 1, h = t - r. Times stay [B]; they are broadcast to the data's rank only
where they multiply data (never reshaped to [B, 1]: the seed guide did, and broadcast r to [B, B]).

Time sampling options of the PyTorch reference (py-meanflow, `meanflow/models/time_sampler.py`).
py-meanflow uses this time convention too (z = (1 - t) x + t e, v = e - x); its `ratio` is
the probability that r != t. With a per-sample coin `keep = rand < data_proportion`
(py-meanflow: `rand < 1 - ratio`):
  v0 ("used in paper"): t, r = max(t, r), min(t, r); then r = where(keep, t, r).
  v1: r = where(keep, t, r); then r = min(t, r); t keeps its own draw. Unmasked samples
      whose draw had r > t therefore also end with r = t, so v1 yields more h = 0 samples.
t and r come from their own logit-normals (cfg.time_dist_params), both (P_mean, P_std)
unless P_mean_t / P_std_t / P_mean_r / P_std_r are set.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD

from meanflow_common.checks import check_times
from meanflow_common.config import MeanFlowConfig
from torch_meanflow.attention import JVP_IMPLS, current_jvp_attention, has_tangent, jvp_attention
from torch_meanflow.jvp_rules import TangentRules

__all__ = [
    "MeanFlowNoise",
    "MeanFlowOutput",
    "sample_tr",
    "sample_noise",
    "guidance_velocity",
    "cond_drop",
    "meanflow_loss",
    "flow_matching_loss",
    "JvpOptions",
    "jvp_engine",
    "JVP_ENGINES",
]

UFn = Callable[..., torch.Tensor]  # u_fn(z, t [B], h [B], y, train) -> u (shape of z)


@dataclass
class MeanFlowNoise:
    """All the randomness of one loss evaluation.

    e: [B, ...] (the data's shape), t, r: [B] with t >= r, drop_mask: bool [B] whose first
    num_drop entries are True (the samples whose label becomes the null label).
    """

    e: torch.Tensor
    t: torch.Tensor
    r: torch.Tensor
    drop_mask: torch.Tensor

    def to(self, device=None, dtype=None) -> "MeanFlowNoise":
        """Move to `device` and cast the float fields to `dtype` (drop_mask stays bool)."""
        return MeanFlowNoise(
            e=self.e.to(device=device, dtype=dtype),
            t=self.t.to(device=device, dtype=dtype),
            r=self.r.to(device=device, dtype=dtype),
            drop_mask=self.drop_mask.to(device=device),
        )


@dataclass
class MeanFlowOutput:
    """Named outputs of the objective (the same names as the JAX twin).

    u, du_dt, v, v_g, u_tgt: the data's shape [B, ...]; loss_per_sample (unweighted L_i),
    v_loss, weight: [B]; loss: scalar (adaptive-weighted mean). Only `u`, `loss_per_sample`
    and `loss` carry gradients to the parameters.
    """

    u: torch.Tensor
    du_dt: torch.Tensor
    v: torch.Tensor
    v_g: torch.Tensor
    u_tgt: torch.Tensor
    loss_per_sample: torch.Tensor
    loss: torch.Tensor
    v_loss: torch.Tensor
    weight: torch.Tensor

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ----------------------------------------------------------------------------------
# Randomness
# ----------------------------------------------------------------------------------


def _sample_time(n: int, cfg: MeanFlowConfig, which: str, generator, device, dtype) -> torch.Tensor:
    """[n] draws of `which` ("t" or "r"): logit-normal(cfg.time_dist_params(which)) or U(0, 1)."""
    if cfg.noise_dist == "logit_normal":
        mean, std = cfg.time_dist_params(which)
        normal = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(normal * std + mean)
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


def sample_tr(batch_size: int, cfg: MeanFlowConfig, generator=None, device=None, dtype=torch.float32):
    """Draw (t, r), both [batch_size], with t >= r.

    t and r are drawn from their own distributions (cfg.time_dist_params for logit-normal).
    rt_mask "first" (JAX reference): t, r = max, min of the two draws, then the first
    floor(batch_size * data_proportion) samples get r = t. rt_mask "random": each sample
    gets r = t with probability data_proportion, in the order of cfg.tr_sampler (module doc:
    v1 keeps t's own draw and takes r = min(t, r)). Draws from `generator`: t, r, coins.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not torch.empty(0, dtype=dtype).is_floating_point():
        raise TypeError(f"sample_tr needs a floating dtype, got {dtype}")
    t = _sample_time(batch_size, cfg, "t", generator, device, dtype)
    r = _sample_time(batch_size, cfg, "r", generator, device, dtype)
    if cfg.rt_mask == "first":
        t, r = torch.maximum(t, r), torch.minimum(t, r)
        data_size = math.floor(batch_size * cfg.data_proportion)
        keep = torch.arange(batch_size, device=t.device) < data_size
        return t, torch.where(keep, t, r)
    keep = torch.rand(batch_size, generator=generator, device=device, dtype=dtype) < cfg.data_proportion
    if cfg.tr_sampler == "v0":
        t, r = torch.maximum(t, r), torch.minimum(t, r)
        return t, torch.where(keep, t, r)
    r = torch.where(keep, t, r)
    return t, torch.minimum(t, r)


def sample_noise(x_shape, cfg: MeanFlowConfig, generator=None, device=None, dtype=torch.float32) -> MeanFlowNoise:
    """Draw a `MeanFlowNoise` for data of shape `x_shape` = [B, ...].

    Order of draws from `generator`: t, r (and the r = t coins when rt_mask="random"), e,
    the class-dropout coins. num_drop = number of coins < class_dropout_prob; the FIRST
    num_drop samples are dropped, as in the JAX reference.
    """
    x_shape = tuple(x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x_shape must be [B, ...] with at least one data axis, got {x_shape}")
    b = x_shape[0]
    t, r = sample_tr(b, cfg, generator=generator, device=device, dtype=dtype)
    e = torch.randn(x_shape, generator=generator, device=device, dtype=dtype)
    coins = torch.rand(b, generator=generator, device=device, dtype=dtype)
    num_drop = (coins < cfg.class_dropout_prob).sum()
    drop_mask = torch.arange(b, device=t.device) < num_drop
    return MeanFlowNoise(e=e, t=t, r=r, drop_mask=drop_mask)


# ----------------------------------------------------------------------------------
# Guidance and class dropout
# ----------------------------------------------------------------------------------


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] of like's rank, so it multiplies data per sample."""
    return a.reshape(a.shape[0], *([1] * (like.dim() - 1)))


def _null_like(y: torch.Tensor, null_y) -> torch.Tensor:
    null = torch.as_tensor(null_y, device=y.device, dtype=y.dtype)
    try:
        return null.expand_as(y)
    except RuntimeError as err:
        raise ValueError(f"null_y of shape {tuple(null.shape)} does not broadcast to y {tuple(y.shape)}") from err


def guidance_velocity(u_fn: UFn, v, z_t, t, y, cfg: MeanFlowConfig, null_y) -> torch.Tensor:
    """The guided velocity v_g [B, ...] (classifier-free guidance folded into the target).

    v, z_t: [B, ...]; t: [B]; y: labels (any tensor with batch axis 0); null_y: the null label
    (scalar or tensor broadcastable to y). The network calls use h = 0, train=False and carry
    no gradient.
    """
    if not cfg.guidance_eq:
        return v
    if null_y is None:
        raise ValueError("guidance_eq='cfg' needs null_y (the null-class label); got None")
    if not torch.is_tensor(y):
        raise TypeError(f"guidance needs tensor labels y, got {type(y).__name__}")
    with torch.no_grad():
        h0 = torch.zeros_like(t)
        v_uncond = u_fn(z_t, t, h0, _null_like(y, null_y), False)
        in_range = (t >= cfg.t_start) & (t <= cfg.t_end)
        omega = _bcast(torch.where(in_range, torch.full_like(t, cfg.omega), torch.ones_like(t)), v)
        if cfg.kappa == 0:
            return v_uncond + omega * (v - v_uncond)
        v_cond = u_fn(z_t, t, h0, y, False)
        kappa = _bcast(torch.where(in_range, torch.full_like(t, cfg.kappa), torch.zeros_like(t)), v)
        return omega * v + (1 - omega - kappa) * v_uncond + kappa * v_cond


def cond_drop(v, v_g, y, drop_mask, null_y):
    """Class dropout: the samples in drop_mask (bool [B]) get the null label and v_g = v.

    Returns (y_inp, v_g). With null_y None, y may be any object (e.g. conditioning tokens)
    as long as no sample is dropped.
    """
    v_g = torch.where(_bcast(drop_mask, v), v, v_g)
    if null_y is None:
        if not torch.compiler.is_compiling() and bool(drop_mask.any()):
            raise ValueError("class dropout drew samples to drop but null_y is None")
        return y, v_g
    if not torch.is_tensor(y):
        raise TypeError(f"class dropout with null_y needs tensor labels y, got {type(y).__name__}")
    y_inp = torch.where(_bcast(drop_mask, y), _null_like(y, null_y), y)
    return y_inp, v_g


# ----------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------


def _check_inputs(x: torch.Tensor, noise: MeanFlowNoise) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 2:
        raise ValueError(f"x must be [B, ...] with at least one data axis, got shape {tuple(x.shape)}")
    b = x.shape[0]
    if tuple(noise.e.shape) != tuple(x.shape):
        raise ValueError(f"noise.e has shape {tuple(noise.e.shape)} but x has shape {tuple(x.shape)}")
    for name in ("t", "r", "drop_mask"):
        a = getattr(noise, name)
        if tuple(a.shape) != (b,):
            raise ValueError(f"noise.{name} must have shape [B] = ({b},), got {tuple(a.shape)}")
    for name in ("e", "t", "r"):
        a = getattr(noise, name)
        if a.dtype != x.dtype:
            raise TypeError(f"noise.{name} has dtype {a.dtype} but x has {x.dtype}; use noise.to(dtype=x.dtype)")
    if noise.drop_mask.dtype != torch.bool:
        raise TypeError(f"noise.drop_mask must be bool, got {noise.drop_mask.dtype}")
    if torch.compiler.is_compiling():
        return  # value checks need the data on the host: skipped in traced code, as in JAX
    check_times(noise.t.detach().double().cpu().numpy(), noise.r.detach().double().cpu().numpy())


# ----------------------------------------------------------------------------------
# The JVP
# ----------------------------------------------------------------------------------
# The "rules" engine (default) runs the JVP under plain forward AD with
# torch_meanflow.jvp_rules.TangentRules, which computes the tangents of the layers that
# matter directly and without autograd history (why: that module's docstring; figures:
# docs/BENCHMARKS.md). Under torch.compile, or inside another AD transform, and with
# engine "torch.func", plain torch.func.jvp is used.

JVP_ENGINES = ("rules", "torch.func")


@dataclass(frozen=True)
class JvpOptions:
    """How the objective computes du/dt: the JVP engine (one of JVP_ENGINES) and the
    attention implementation under the tangent (one of torch_meanflow.attention.JVP_IMPLS).

    Passed to `meanflow_loss(..., jvp=JvpOptions(...))`; the attention choice holds for the
    objective's JVP only. Without it the objective uses the selection of the enclosing
    `jvp_engine` / `jvp_attention` blocks (default: "rules", "fused").
    """

    engine: str = JVP_ENGINES[0]
    attention: str = JVP_IMPLS[0]

    def __post_init__(self):
        if self.engine not in JVP_ENGINES:
            raise ValueError(f"unknown JVP engine {self.engine!r}; choose from {list(JVP_ENGINES)}")
        if self.attention not in JVP_IMPLS:
            raise ValueError(f"unknown JVP attention implementation {self.attention!r}; choose from {list(JVP_IMPLS)}")


# The engine of the enclosing `jvp_engine` block, scoped like the attention selection.
_ENGINE: contextvars.ContextVar[str] = contextvars.ContextVar("torch_meanflow_jvp_engine", default=JVP_ENGINES[0])


@contextlib.contextmanager
def jvp_engine(name: str):
    """Within the block (this context only), objectives called without `jvp=` compute du/dt
    with engine `name` ("rules": default, "torch.func": plain torch.func.jvp)."""
    if name not in JVP_ENGINES:
        raise ValueError(f"unknown JVP engine {name!r}; choose from {list(JVP_ENGINES)}")
    token = _ENGINE.set(name)
    try:
        yield
    finally:
        _ENGINE.reset(token)


def current_jvp_options() -> JvpOptions:
    """The options of the enclosing `jvp_engine` / `jvp_attention` blocks."""
    return JvpOptions(_ENGINE.get(), current_jvp_attention())


def _jvp(fn, primals, tangents, options: JvpOptions):
    """(fn(*primals), its JVP along `tangents`) with `options`."""
    if torch.compiler.is_compiling():  # the traced attention takes the math kernel itself
        return torch.func.jvp(fn, primals, tangents)
    with jvp_attention(options.attention):
        if options.engine == "torch.func" or has_tangent(*primals):
            return torch.func.jvp(fn, primals, tangents)
        with fwAD.dual_level():
            duals = tuple(fwAD.make_dual(p, t) for p, t in zip(primals, tangents))
            with TangentRules():
                out = fn(*duals)
            u, du_dt = fwAD.unpack_dual(out)
    return u, (torch.zeros_like(u) if du_dt is None else du_dt)


def _rng_state(device: torch.device):
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    return torch.get_rng_state(), None


def _set_rng_state(device: torch.device, state) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _u_and_du_dt(fn, z_t, t, r, tangent, jvp_path: str, options: JvpOptions):
    """u = fn(z_t, t, r) and its total derivative along (tangent, 1, 0)."""
    primals = (z_t, t, r)
    tangents = (tangent, torch.ones_like(t), torch.zeros_like(r))
    if jvp_path == "jvp":
        return _jvp(fn, primals, tangents, options)
    # py-meanflow's memory-saving path: the JVP keeps no graph; u gets its own forward.
    # Restoring the RNG state makes the second forward draw the same dropout masks.
    state = _rng_state(z_t.device)
    with torch.no_grad():
        _, du_dt = _jvp(fn, primals, tangents, options)
    _set_rng_state(z_t.device, state)
    return fn(z_t, t, r), du_dt


def _finish(u, du_dt, v, v_g, t, r, cfg: MeanFlowConfig) -> MeanFlowOutput:
    h = t - r
    if cfg.clip_h:
        h = h.clamp(0.0, 1.0)
    u_tgt = (v_g - _bcast(h, du_dt) * du_dt).detach()
    dims = tuple(range(1, u.dim()))
    loss_per_sample = ((u - u_tgt) ** 2).sum(dim=dims)
    weight = (loss_per_sample.detach() + cfg.norm_eps) ** cfg.norm_p
    loss = (loss_per_sample / weight).mean()
    v_loss = ((u.detach() - v) ** 2).sum(dim=dims)
    return MeanFlowOutput(
        u=u, du_dt=du_dt.detach(), v=v, v_g=v_g.detach(), u_tgt=u_tgt,
        loss_per_sample=loss_per_sample, loss=loss, v_loss=v_loss, weight=weight,
    )


def _prepare(u_fn, x, y, noise, cfg, null_y):
    _check_inputs(x, noise)
    tb = _bcast(noise.t, x)
    z_t = (1 - tb) * x + tb * noise.e
    v = noise.e - x
    v_g = guidance_velocity(u_fn, v, z_t, noise.t, y, cfg, null_y) if cfg.guidance_eq else v
    y_inp, v_g = cond_drop(v, v_g, y, noise.drop_mask, null_y)
    return z_t, v, v_g, y_inp


def meanflow_loss(u_fn: UFn, x, y, noise: MeanFlowNoise, cfg: MeanFlowConfig, null_y=None, train=True,
                  jvp: JvpOptions | None = None) -> MeanFlowOutput:
    """The MeanFlow loss with du/dt from one forward-mode JVP (engine and attention: `jvp`,
    a `JvpOptions`; None: those of the enclosing `jvp_engine` / `jvp_attention` blocks).

    x: data [B, ...]; y: labels/conditioning passed to u_fn; noise: `MeanFlowNoise` of x's
    dtype; null_y: the null label (needed with guidance or class dropout).
    du/dt is the total derivative of (z, t, r) -> u(z, t, t - r) at (z_t, t, r) along
    (v_g, 1, 0) (or (v, 1, 0) with cfg.tangent == "v"). Autocast is disabled around the
    JVP. The primal output u stays differentiable w.r.t. the parameters u_fn closes over.
    """
    options = current_jvp_options() if jvp is None else jvp
    z_t, v, v_g, y_inp = _prepare(u_fn, x, y, noise, cfg, null_y)
    tangent = v_g if cfg.tangent == "guided" else v

    def fn(z, t, r):
        return u_fn(z, t, t - r, y_inp, train)

    with torch.autocast(x.device.type, enabled=False):
        u, du_dt = _u_and_du_dt(fn, z_t, noise.t, noise.r, tangent, cfg.jvp_path, options)
        return _finish(u, du_dt, v, v_g, noise.t, noise.r, cfg)


def flow_matching_loss(u_fn: UFn, x, y, noise: MeanFlowNoise, cfg: MeanFlowConfig, null_y=None, train=True) -> MeanFlowOutput:
    """Plain flow-matching baseline: u(z_t, t, h=0) regressed on v_g; no JVP (du_dt = 0).

    Same inputs and outputs as `meanflow_loss`; noise.r is validated but unused.
    """
    z_t, v, v_g, y_inp = _prepare(u_fn, x, y, noise, cfg, null_y)
    u = u_fn(z_t, noise.t, torch.zeros_like(noise.t), y_inp, train)
    return _finish(u, torch.zeros_like(u), v, v_g, noise.t, noise.t, cfg)

