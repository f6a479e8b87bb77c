"""MeanFlow sampling in PyTorch, twin of `jax_meanflow.solver`.

One step from t to r: z_r = z_t - (t - r) u(z_t, t, t - r, y). The schedule runs from
t = 1 (noise) to 0 (data); one step is 1-NFE generation x = e - u(e, 1, 1, y).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from meanflow_common.checks import check_num_steps, check_schedule

__all__ = ["sampling_schedule", "solver_step", "generate"]


def sampling_schedule(num_steps: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Times [num_steps + 1] from 1.0 down to 0.0, evenly spaced (computed in float64)."""
    num_steps = check_num_steps(num_steps)
    grid = np.linspace(1.0, 0.0, num_steps + 1, dtype=np.float64)
    return torch.as_tensor(grid, device=device).to(dtype)


def solver_step(u_fn: Callable[..., torch.Tensor], z_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, y) -> torch.Tensor:
    """z_r [B, ...] = z_t - (t - r) u(z_t, t, t - r, y) with the network in eval mode.

    z_t: [B, ...]; t, r: [B] with t >= r.
    """
    b = z_t.shape[0]
    for name, a in (("t", t), ("r", r)):
        if tuple(a.shape) != (b,):
            raise ValueError(f"{name} must have shape [B] = ({b},), got {tuple(a.shape)}")
    h = t - r
    u = u_fn(z_t, t, h, y, False)
    return z_t - h.reshape(b, *([1] * (z_t.dim() - 1))) * u


def _check_schedule(schedule: torch.Tensor) -> None:
    check_schedule(schedule.detach().double().cpu().numpy())


def generate(u_fn: Callable[..., torch.Tensor], e: torch.Tensor, y, num_steps: int = 1, schedule=None) -> torch.Tensor:
    """Samples [B, ...] from noise e [B, ...] (time 1) to data (time 0), without gradient.

    schedule: decreasing times [S + 1] in [0, 1] (default `sampling_schedule(num_steps)`
    in e's dtype); one solver step per interval.
    """
    if not e.is_floating_point():
        raise TypeError(f"noise e must be floating, got {e.dtype}")
    if schedule is None:
        schedule = sampling_schedule(num_steps, device=e.device, dtype=e.dtype)
    schedule = torch.as_tensor(schedule, dtype=e.dtype, device=e.device)
    _check_schedule(schedule)
    b = e.shape[0]
    z = e
    with torch.no_grad():
        for i in range(schedule.shape[0] - 1):
            z = solver_step(u_fn, z, schedule[i].expand(b), schedule[i + 1].expand(b), y)
    return z
