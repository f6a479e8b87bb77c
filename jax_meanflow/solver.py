"""MeanFlow sampling: one average-velocity step per interval of a schedule from 1 to 0.

A step from t to r is z_r = z_t - (t - r) u(z_t, t, t - r, y). The default schedule
[1, 0] is 1-NFE generation, x = e - u(e, 1, 1, y).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from meanflow_common.checks import check_num_steps, check_schedule

__all__ = ["sampling_schedule", "solver_step", "generate", "make_generate"]


def sampling_schedule(num_steps: int, dtype=jnp.float32) -> jax.Array:
    """Evenly spaced times [num_steps + 1] from 1 down to 0."""
    num_steps = check_num_steps(num_steps)
    return jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)


def solver_step(u_fn: Callable, z_t, t, r, y) -> jax.Array:
    """z_r = z_t - (t - r) u(z_t, t, t - r, y, train=False).

    z_t: [B, ...]; t, r: [B]; y: conditioning [B, ...] (or None). Returns z_r like z_t.
    """
    batch = (z_t.shape[0],)
    if jnp.shape(t) != batch or jnp.shape(r) != batch:
        raise ValueError(f"t and r must have shape [B]={batch}, got {jnp.shape(t)} and {jnp.shape(r)}")
    h = t - r
    u = u_fn(z_t, t, h, y, False)
    return z_t - jnp.reshape(h, batch + (1,) * (z_t.ndim - 1)) * u


def _check_schedule(schedule) -> None:
    try:
        s = np.asarray(schedule)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return  # traced schedule: checked by whoever built it
    check_schedule(s)


def generate(u_fn: Callable, e, y, num_steps: int = 1, schedule=None) -> jax.Array:
    """Integrate from noise e [B, ...] (time 1) to data (time 0).

    schedule: times [S + 1], decreasing (default `sampling_schedule(num_steps)` in e's
    dtype). jit-compatible: the steps run in a `lax.fori_loop` over the schedule.
    """
    e = jnp.asarray(e)
    if schedule is None:
        schedule = sampling_schedule(num_steps, e.dtype)
    _check_schedule(schedule)
    schedule = jnp.asarray(schedule, e.dtype)
    batch = e.shape[0]

    def body(i, z):
        t = jnp.full((batch,), schedule[i], e.dtype)
        r = jnp.full((batch,), schedule[i + 1], e.dtype)
        return solver_step(u_fn, z, t, r, y)

    return jax.lax.fori_loop(0, schedule.shape[0] - 1, body, e)


def make_generate(u_fn_builder: Callable, num_steps: int = 1) -> Callable:
    """A jitted `sample(params, e, y) -> x`, where `u_fn_builder(params)` returns u_fn."""

    @jax.jit
    def sample(params, e, y):
        return generate(u_fn_builder(params), e, y, num_steps=num_steps)

    return sample
