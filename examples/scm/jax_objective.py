"""The sCM objective in JAX (the reference side): TrigFlow consistency training in continuous time.

TrigFlow: x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_d^2 I), t in [0, pi/2]; the network F is
called on x_t / sigma_d and t: `F_fn(x, t, y, train) -> F` with F of x's shape, t [B]. Per
sample, with F- = stop_gradient(F) (the paper's theta- = theta in continuous time):
- dx_t/dt = cos(t) z - sin(t) x0 (tangent "data"), or sigma_d F- (tangent "model");
- dF-/dt = the JVP of (x, t) -> F(x, t) at (x_t / sigma_d, t) along (dx_t/dt / sigma_d, 1);
- g = -cos(t)^2 (sigma_d F- - dx_t/dt) - r cos(t) sin(t) (x_t + sigma_d dF-/dt), r the warmup;
- g <- g / (||g|| + c) (tangent normalisation, the norm over each sample's elements);
- L_i = sum (F - F- - g)^2 over the sample's elements; loss = mean_i L_i / D, D the elements
  per sample (the paper's adaptive weight w(t) is left out: w = 0).
Imports JAX only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from examples.scm.config import SCMConfig


@struct.dataclass
class SCMNoise:
    """z: [B, ...] like the data (N(0, sigma_d^2 I)); t: [B] in (0, pi/2)."""

    z: jax.Array
    t: jax.Array


def sample_noise(key, x_shape, cfg: SCMConfig, dtype=jnp.float32) -> SCMNoise:
    """z ~ N(0, sigma_d^2 I) of `x_shape`, t = arctan(exp(P_mean + P_std n) / sigma_d); keys split (z, t)."""
    k_z, k_t = jax.random.split(key)
    z = cfg.sigma_d * jax.random.normal(k_z, tuple(x_shape), dtype)
    tau = cfg.P_mean + cfg.P_std * jax.random.normal(k_t, (x_shape[0],), dtype)
    return SCMNoise(z=z, t=jnp.arctan(jnp.exp(tau) / cfg.sigma_d))


def _bcast(a, ndim: int):
    return jnp.reshape(a, a.shape + (1,) * (ndim - a.ndim))


def scm_loss(F_fn, x, y, noise: SCMNoise, cfg: SCMConfig, train: bool = False) -> dict:
    """{F, dF_dt, dxt_dt, g, loss_per_sample, loss}: F, dF_dt, dxt_dt, g [B, ...] like x (F at
    x_t / sigma_d, t), loss_per_sample [B], loss scalar (the formulas: module docstring)."""
    t = noise.t
    cos, sin = _bcast(jnp.cos(t), x.ndim), _bcast(jnp.sin(t), x.ndim)
    x_t = cos * x + sin * noise.z
    x_in = x_t / cfg.sigma_d

    def f(xi, ti):
        return F_fn(xi, ti, y, train)

    if cfg.tangent == "data":
        dxt_dt = cos * noise.z - sin * x
    else:
        dxt_dt = cfg.sigma_d * jax.lax.stop_gradient(f(x_in, t))
    F, dF_dt = jax.jvp(f, (x_in, t), (dxt_dt / cfg.sigma_d, jnp.ones_like(t)))
    F_minus, dF_dt = jax.lax.stop_gradient(F), jax.lax.stop_gradient(dF_dt)
    g = -cos**2 * (cfg.sigma_d * F_minus - dxt_dt) - cfg.warmup * cos * sin * (x_t + cfg.sigma_d * dF_dt)
    axes = tuple(range(1, x.ndim))
    norm = jnp.sqrt(jnp.sum(g**2, axis=axes, keepdims=True))
    g = jax.lax.stop_gradient(g / (norm + cfg.tangent_c)) if cfg.tangent_c > 0 else jax.lax.stop_gradient(g)
    loss_per_sample = jnp.sum((F - F_minus - g) ** 2, axis=axes)
    return {"F": F, "dF_dt": dF_dt, "dxt_dt": dxt_dt, "g": g, "loss_per_sample": loss_per_sample,
            "loss": jnp.mean(loss_per_sample) / (x.size // x.shape[0])}
