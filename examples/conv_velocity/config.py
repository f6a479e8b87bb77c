"""The configuration of the example network (framework-free, shared by both sides)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConvVelocityConfig:
    """Images [B, image_size, image_size, channels] (NHWC in Flax, NCHW in torch), class labels
    in [0, num_classes) with the null class num_classes; `depth` residual blocks of `width`
    channels, each modulated by the embedding of (t, h, y); time_dim sinusoidal features per time."""

    image_size: int = 8
    channels: int = 1
    width: int = 16
    depth: int = 2
    num_classes: int = 4
    time_dim: int = 16

    def __post_init__(self):
        for name in ("image_size", "channels", "width", "depth", "num_classes", "time_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ConvVelocityConfig.{name} must be a positive int, got {value!r}")
        if self.time_dim % 2:
            raise ValueError(f"ConvVelocityConfig.time_dim must be even (cos and sin halves), got {self.time_dim}")


PRESETS = {
    "tiny": ConvVelocityConfig(),
    "small": ConvVelocityConfig(image_size=16, channels=3, width=32, depth=4, num_classes=10, time_dim=32),
}


def time_frequencies(time_dim: int) -> np.ndarray:
    """float64 [time_dim // 2]: the sinusoidal frequencies exp(-log(1e4) k / half), one table
    for both sides (each casts it to its working dtype)."""
    half = time_dim // 2
    return np.exp(-np.log(10000.0) * np.arange(half, dtype=np.float64) / half)
