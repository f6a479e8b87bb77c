"""Observation noise on training batches (NumPy only).

A behaviour-cloning policy trained on few demonstrations can fit each demonstration's side
to its own start, since every (start, goal) is unique; Gaussian noise on the conditioning
observation of each training batch smooths that fit toward the data's conditional over
nearby observations. The noise is a pure function of (seed, step), drawn for the global
batch, so both backends, every device and a resumed run see the same values.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["OBS_NOISE_STREAM", "obs_noise_draw", "with_obs_noise"]

OBS_NOISE_STREAM = 181  # a generator stream of its own: batch_indices uses [seed, epoch]


def obs_noise_draw(seed: int, step: int, shape: tuple) -> np.ndarray:
    """Standard normal float32 [*shape]: the observation noise of update `step`."""
    return np.random.default_rng([int(seed), int(step), OBS_NOISE_STREAM]).standard_normal(shape).astype(np.float32)


def with_obs_noise(batch_fn: Callable, key: str, std: float) -> Callable:
    """batch_fn(dataset, seed, step, batch_size) -> batch, with batch[key] += std * noise.

    key names a float field of the batch ([B, ...]); std >= 0 (0 returns batch_fn itself).
    """
    if not np.isfinite(std) or std < 0:
        raise ValueError(f"observation noise std must be finite and >= 0, got {std!r}")
    if std == 0:
        return batch_fn

    def noisy(dataset, seed, step, batch_size):
        batch = dict(batch_fn(dataset, seed, step, batch_size))
        obs = np.asarray(batch[key])
        if obs.dtype.kind != "f":
            raise ValueError(f"observation noise needs float {key!r}, got dtype {obs.dtype}")
        batch[key] = (obs + std * obs_noise_draw(seed, step, obs.shape)).astype(obs.dtype)
        return batch

    return noisy
