"""The host-side half of both trainers' samplers (`make_sampler(...)(cond, noise, num_steps)`).

`sample_inputs` checks and completes a sampling request in NumPy before any framework call.
The JAX sampler runs under jit, where a label -1 silently indexes the null class, a label
past the table gives NaN and a float label is truncated; so every check happens here, once,
for both backends.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from meanflow_common.checks import check_num_steps
from meanflow_common.tasks import get_task
from meanflow_common.train_config import TrainConfig, data_shape, model_config

__all__ = ["sample_inputs"]


def sample_inputs(cfg: TrainConfig, cond: Any, noise: Any = None, num_steps: Optional[int] = None, seed: int = 0,
                  allow_null: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(cond, noise, steps) for one sampling call, checked.

    cond: as the task's `check_cond` takes it: digits labels int [B] in [0, num_classes)
    (the null class num_classes only with `allow_null`), reach observations float
    [B, obs_dim]. noise: [B, *data_shape(cfg)] in the data interface's layout (digits
    NHWC), default `np.random.default_rng(seed)` normal draws (float64). num_steps: int
    >= 1, default cfg.mf.num_steps; the regression baseline always takes one step.
    """
    task = get_task(cfg.task)
    cond = task.check_cond(model_config(cfg), cond, allow_null)
    shape = (cond.shape[0], *data_shape(cfg))
    if noise is None:
        noise = np.random.default_rng(seed).standard_normal(shape)
    noise = np.asarray(noise)
    if noise.dtype.kind != "f":
        raise TypeError(f"noise must be floating point, got dtype {noise.dtype}")
    if noise.shape != shape:
        raise ValueError(f"noise has shape {noise.shape}; {cfg.task} sampling of {shape[0]} takes {shape} "
                         f"({task.layout})")
    if not np.all(np.isfinite(noise)):
        raise ValueError("noise holds NaN or inf")
    steps = cfg.mf.num_steps if num_steps is None else check_num_steps(num_steps)
    return cond, noise, (1 if cfg.method == "regression" else steps)
