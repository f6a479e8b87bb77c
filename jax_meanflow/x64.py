"""float64 in JAX: `jax_enable_x64` switched on where a run or recipe asks for float64.

JAX keeps float64 only with `jax_enable_x64`, a process-wide flag to set before the
first array is created. The command lines that meet a recipe (`python -m
jax_meanflow.train`, `python -m jax_meanflow.evaluate`) call these before they build
anything, so a float64 run trains, resumes and evaluates without the user setting it.
"""
from __future__ import annotations

import json
import os

import jax

__all__ = ["enable_for", "enable_for_run"]


def enable_for(dtype: str) -> None:
    """Switch on x64 when `dtype` (a TrainConfig.dtype) is "float64"."""
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def enable_for_run(run_dir: str) -> None:
    """Switch on x64 when the run folder's config.json records dtype float64. A folder
    without a readable config is left to the loader, which names what is wrong."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            dtype = json.load(f)["train"].get("dtype")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    enable_for(dtype)
