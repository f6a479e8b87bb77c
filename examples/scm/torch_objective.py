"""The sCM objective in PyTorch, twin of examples/scm/jax_objective.py (the formulas are in its
docstring). `F_fn(x, t, y, train) -> F` in torch's layout; dF/dt by `torch.func.jvp`.

`data_tangent` and `target` are looked up when `scm_loss` runs, so that the negative controls
(examples/scm/objective.py) can patch them; `broken_data_tangent` is the plausible porting
bug of the broken twin (the sign of the sin term flipped). Imports torch only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from examples.scm.config import SCMConfig


@dataclass
class SCMNoise:
    """z: [B, ...] like the data (N(0, sigma_d^2 I)); t: [B] in (0, pi/2)."""

    z: torch.Tensor
    t: torch.Tensor


def sample_noise(x_shape, cfg: SCMConfig, generator=None, dtype=torch.float32) -> SCMNoise:
    """z ~ N(0, sigma_d^2 I) of `x_shape`, t = arctan(exp(P_mean + P_std n) / sigma_d); draws z, then t."""
    z = cfg.sigma_d * torch.randn(tuple(x_shape), generator=generator, dtype=dtype)
    tau = cfg.P_mean + cfg.P_std * torch.randn(x_shape[0], generator=generator, dtype=dtype)
    return SCMNoise(z=z, t=torch.arctan(torch.exp(tau) / cfg.sigma_d))


def _bcast(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], *([1] * (like.dim() - 1)))


def data_tangent(x0, z, cos, sin):
    """dx_t/dt of x_t = cos(t) x0 + sin(t) z."""
    return cos * z - sin * x0


def broken_data_tangent(x0, z, cos, sin):
    """The broken twin's tangent: the sin term's sign flipped (d/dt cos(t) = -sin(t) forgotten)."""
    return cos * z + sin * x0


def target(F, dF_dt, x_t, dxt_dt, cos, sin, cfg: SCMConfig):
    """The normalised tangent g (no gradient), from F- = F detached and dF-/dt."""
    F_minus = F.detach()
    g = -cos**2 * (cfg.sigma_d * F_minus - dxt_dt) - cfg.warmup * cos * sin * (x_t + cfg.sigma_d * dF_dt.detach())
    if cfg.tangent_c > 0:
        dims = tuple(range(1, g.dim()))
        g = g / (g.pow(2).sum(dim=dims, keepdim=True).sqrt() + cfg.tangent_c)
    return g.detach(), F_minus


def scm_loss(F_fn, x, y, noise: SCMNoise, cfg: SCMConfig, train: bool = False, tangent_fn=None) -> dict:
    """{F, dF_dt, dxt_dt, g, loss_per_sample, loss} as the JAX twin; only F, loss_per_sample and
    loss carry gradients. `tangent_fn`: the data tangent (default `data_tangent`)."""
    cos, sin = _bcast(torch.cos(noise.t), x), _bcast(torch.sin(noise.t), x)
    x_t = cos * x + sin * noise.z
    x_in = x_t / cfg.sigma_d

    def f(xi, ti):
        return F_fn(xi, ti, y, train)

    if cfg.tangent == "data":
        dxt_dt = (tangent_fn or data_tangent)(x, noise.z, cos, sin)
    else:
        with torch.no_grad():
            dxt_dt = cfg.sigma_d * f(x_in, noise.t)
    F, dF_dt = torch.func.jvp(f, (x_in, noise.t), (dxt_dt / cfg.sigma_d, torch.ones_like(noise.t)))
    g, F_minus = target(F, dF_dt, x_t, dxt_dt, cos, sin, cfg)
    dims = tuple(range(1, x.dim()))
    loss_per_sample = ((F - F_minus - g) ** 2).sum(dim=dims)
    return {"F": F, "dF_dt": dF_dt.detach(), "dxt_dt": dxt_dt, "g": g, "loss_per_sample": loss_per_sample,
            "loss": loss_per_sample.mean() / (x.numel() // x.shape[0])}
