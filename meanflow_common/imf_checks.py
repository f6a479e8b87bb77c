"""Input checks of the iMF / pMF losses, shared by both backends (no framework import).

Each backend passes shapes (tuples) and NumPy copies of the per-sample values, so the two
twins raise the same error for the same bad input.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from meanflow_common.checks import check_times

__all__ = ["PER_SAMPLE_FIELDS", "check_imf_shapes", "check_imf_values", "check_guidance_values", "check_labels",
           "check_perceptual_hooks"]

# The [B] fields of IMFNoise / PMFNoise (e has the data's shape).
PER_SAMPLE_FIELDS = ("t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")


def check_imf_shapes(x_shape: Sequence[int], e_shape: Sequence[int], per_sample: Mapping[str, Sequence[int]]):
    """x [B, ...] with at least 2 axes, e of x's shape, every per-sample field [B]."""
    x_shape = tuple(x_shape)
    if len(x_shape) < 2:
        raise ValueError(f"x must be [B, ...] with at least 2 axes, got shape {x_shape}")
    if tuple(e_shape) != x_shape:
        raise ValueError(f"noise.e has shape {tuple(e_shape)} but x has shape {x_shape}")
    for name, shape in per_sample.items():
        if tuple(shape) != x_shape[:1]:
            raise ValueError(f"noise.{name} must have shape [B] = ({x_shape[0]},), got {tuple(shape)}")


def check_labels(y_shape: Sequence[int], batch: int):
    if tuple(y_shape) != (batch,):
        raise ValueError(f"y must be integer labels of shape [B] = ({batch},), got shape {tuple(y_shape)}")


def check_imf_values(t, r, omega, t_min, t_max, fm_mask):
    """Times 0 <= r <= t <= 1; omega >= 1 (the network sees 1 - 1/omega); 0 <= t_min <= t_max
    <= 1; r == t on the fm samples. NumPy arrays [B]; NaN and inf are refused."""
    check_times(t, r)
    check_guidance_values(omega, t_min, t_max)
    fm = np.asarray(fm_mask, bool)
    bad = np.flatnonzero(fm & ~(np.asarray(r) == np.asarray(t)))
    if bad.size:
        raise ValueError(f"fm samples (fm_mask True) need r == t; they differ at indices {bad[:10].tolist()}")


def check_guidance_values(omega, t_min, t_max):
    """omega >= 1 and 0 <= t_min <= t_max <= 1 (NumPy [B] or scalars); NaN and inf refused."""
    omega = np.atleast_1d(np.asarray(omega, np.float64))
    bad = np.flatnonzero(~(np.isfinite(omega) & (omega >= 1.0)))
    if bad.size:
        raise ValueError(f"omega must be finite and >= 1 (the guidance scale; 1 = none), got "
                         f"{omega[bad[:3]].tolist()} at indices {bad[:10].tolist()}")
    t_min, t_max = np.broadcast_arrays(np.atleast_1d(np.asarray(t_min, np.float64)),
                                       np.atleast_1d(np.asarray(t_max, np.float64)))
    bad = np.flatnonzero(~((t_min >= 0) & (t_min <= t_max) & (t_max <= 1)))
    if bad.size:
        raise ValueError(f"the guidance interval needs 0 <= t_min <= t_max <= 1; violated at indices "
                         f"{bad[:10].tolist()}: t_min {t_min[bad[:3]].tolist()}, t_max {t_max[bad[:3]].tolist()}")


def check_perceptual_hooks(cfg, hooks, hooks_cls):
    """`hooks` (a `hooks_cls`: the backend's PerceptualHooks, fields lpips and convnext, each a
    distance function or None) against cfg's lpips / convnext switches: a switch on without
    its hook, or a hook without its switch, is refused naming both. Returns hooks."""
    if not isinstance(hooks, hooks_cls):
        raise TypeError(f"perceptual must be a PerceptualHooks, got {type(hooks).__name__}")
    for name in ("lpips", "convnext"):
        on, fn = getattr(cfg, name), getattr(hooks, name)
        if on and fn is None:
            raise ValueError(f"PMFConfig.{name}=True but no {name} hook was given (perceptual=PerceptualHooks("
                             f"{name}=fn)); or set {name}=False")
        if fn is not None and not on:
            raise ValueError(f"a {name} hook was given but PMFConfig.{name}=False; set it True or drop the hook")
    return hooks
