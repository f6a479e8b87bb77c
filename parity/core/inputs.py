"""One input bundle, generated once in NumPy float64 and cast for each side.

The bundle holds everything random that the objective consumes; MeanFlow's (`InputBundle`):
data x, conditioning y (class labels for the DiT; conditioning tokens for FLOWER), noise e,
times (t, r) and the class-dropout mask. Both backends get exactly these numbers, so any
difference in their outputs comes from the implementations, not from the randomness.
Another objective declares its own bundle (a frozen dataclass with x and y among its
fields: `Objective.make_bundle`).

Layouts: bundles are stored in the JAX layout; the architecture's `Arch.layout` moves data
arrays to torch's (parity.core.sides). Each architecture builds its own MeanFlow bundle
(`Arch.make_bundle`) from the samplers here, or gives its data alone (`Arch.make_data`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from meanflow_common.config import MeanFlowConfig
from parity.core import sampler_oracle


@dataclass(frozen=True)
class InputBundle:
    """x, e: [B, ...data] (JAX layout); y: the conditioning (e.g. int [B] or a dict of arrays);
    t, r: [B]; drop_mask: bool [B]; arch: the architecture's name (a label)."""

    arch: str
    x: np.ndarray
    y: Any
    e: np.ndarray
    t: np.ndarray
    r: np.ndarray
    drop_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]


def sample_tr_numpy(rng: np.random.Generator, batch: int, cfg: MeanFlowConfig):
    """(t, r) with the reference semantics, float64 [B] each.

    The first floor(B * data_proportion) samples get r = t (the "first" mask of the
    JAX reference; parity.core.sampler_oracle has the formulas); the bundle is explicit
    randomness, so both sides see the same mask.
    """
    return sampler_oracle.draw_tr(rng, batch, replace(cfg, rt_mask="first"))


def cover_guidance_window(t: np.ndarray, r: np.ndarray, drop_mask: np.ndarray, cfg: MeanFlowConfig):
    """(t, r) [B] with kept samples on both sides of a guidance window narrower than [0, 1].

    A dropped sample's v_g is v whatever the window says, so only kept samples show the
    guidance branches: when the draw left one side empty, the first kept sample moves
    inside or the last one outside (r = t stays r = t; r < t stays r < t).
    parity.coverage checks the result.
    """
    kept = np.flatnonzero(~np.asarray(drop_mask))
    if not cfg.guidance_eq or kept.size < 2 or (cfg.t_start <= 0.0 and cfg.t_end >= 1.0):
        return t, r
    t, r = t.copy(), r.copy()
    inside = (t[kept] >= cfg.t_start) & (t[kept] <= cfg.t_end)

    def move(i, value):
        tied = r[i] == t[i]
        t[i] = value
        r[i] = value if tied else min(r[i], 0.5 * value)

    if not inside.any():
        move(kept[0], 0.5 * (max(cfg.t_start, 0.0) + min(cfg.t_end, 1.0)))
    if inside.all():
        move(kept[-1], 0.5 * (cfg.t_end + 1.0) if cfg.t_end < 1.0 else 0.5 * cfg.t_start)
    return t, r


def drop_mask_numpy(rng: np.random.Generator, batch: int, prob: float) -> np.ndarray:
    """The first num_drop samples dropped, num_drop ~ Binomial(B, prob).

    At least one sample is dropped when prob > 0 and, when B > 2, two are kept (one when
    B = 2), so that a parity check exercises both branches of the class dropout and a
    guidance window can have a kept sample on each side (`cover_guidance_window`).
    """
    mask = np.zeros(batch, dtype=bool)
    if prob <= 0:
        return mask
    num_drop = int(rng.binomial(batch, prob))
    num_drop = min(max(num_drop, 1), max(batch - (2 if batch > 2 else 1), 1))
    mask[:num_drop] = True
    return mask


def rounded_bundle(bundle, dtype=np.float32):
    """The bundle (any objective's: a dataclass of arrays) with every floating array field (in
    a dict field such as y too) rounded to `dtype` and back to float64: the inputs a side in
    `dtype` sees, for a float64 run on the same numbers. Integer and boolean arrays (labels,
    masks) and other fields (labels) are kept."""
    def rnd(a):
        if isinstance(a, dict):
            return {k: rnd(v) for k, v in a.items()}
        if not isinstance(a, (np.ndarray, np.generic)):
            return a
        return a.astype(dtype).astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a

    return replace(bundle, **{f.name: rnd(getattr(bundle, f.name)) for f in fields(bundle)})


def with_times(bundle: InputBundle, t: np.ndarray, r: np.ndarray) -> InputBundle:
    return replace(bundle, t=np.asarray(t, np.float64), r=np.asarray(r, np.float64))
