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
from meanflow_common.train_config import TrainConfig, data_shape, model_config, objective_config, train_method

__all__ = ["sample_inputs", "sampling_knobs"]


def sampling_knobs(cfg: TrainConfig, batch: int, given: Optional[dict] = None) -> dict:
    """{knob: float64 [B]} of the method's sampling knobs (`TrainMethod.sampling_fields`, e.g.
    iMF's omega, t_min, t_max): each given one (a number or [B]) or the settings' default
    `sample_<knob>`. A knob the method does not take, a wrong shape, a non-finite value,
    omega < 1 or an interval outside [0, 1] or with t_min > t_max is a ValueError naming it."""
    method = train_method(cfg)
    given = dict(given or {})
    unknown = sorted(set(given) - set(method.sampling_fields))
    if unknown:
        takes = ", ".join(method.sampling_fields) or "none"
        raise ValueError(f"method {method.name!r} takes no sampling knob {', '.join(unknown)} (it takes: {takes})")
    out = {}
    for name, default in method.sampling_defaults(objective_config(cfg)).items():
        a = np.asarray(given.get(name, default))
        if a.dtype.kind not in "iuf":
            raise TypeError(f"sampling knob {name} must be a number or [B] numbers, got dtype {a.dtype}")
        if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != batch):
            raise ValueError(f"sampling knob {name} must be a scalar or [B] = ({batch},), got shape {a.shape}")
        a = np.broadcast_to(a.astype(np.float64), (batch,)).copy()
        if not np.all(np.isfinite(a)):
            raise ValueError(f"sampling knob {name} holds NaN or inf")
        out[name] = a
    if "omega" in out and np.any(out["omega"] < 1):
        raise ValueError(f"sampling knob omega must be >= 1 (1 = no guidance), got min {out['omega'].min()}")
    for name in ("t_min", "t_max"):
        if name in out and (np.any(out[name] < 0) or np.any(out[name] > 1)):
            raise ValueError(f"sampling knob {name} must lie in [0, 1], got [{out[name].min()}, {out[name].max()}]")
    if "t_min" in out and "t_max" in out and np.any(out["t_min"] > out["t_max"]):
        raise ValueError("sampling knobs t_min > t_max: the guidance interval would be empty")
    return out


def sample_inputs(cfg: TrainConfig, cond: Any, noise: Any = None, num_steps: Optional[int] = None, seed: int = 0,
                  allow_null: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(cond, noise, steps) for one sampling call, checked.

    cond: as the task's `check_cond` takes it: digits labels int [B] in [0, num_classes)
    (the null class num_classes only with `allow_null`), reach observations float
    [B, obs_dim]. noise: [B, *data_shape(cfg)] in the data interface's layout (digits
    NHWC), default `np.random.default_rng(seed)` normal draws (float64). num_steps: int
    >= 1, default the method's settings' num_steps; a method with `fixed_steps` (the
    regression baseline: 1) always takes that many.
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
    steps = objective_config(cfg).num_steps if num_steps is None else check_num_steps(num_steps)
    fixed = train_method(cfg).fixed_steps
    return cond, noise, (fixed or steps)
