"""The configuration of the GroupNorm + FiLM example (framework-free, shared by both sides)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupNormFilmConfig:
    """Images [B, height, width, channels] (NHWC in Flax, NCHW in torch), class labels in
    [0, num_classes) with the null class num_classes; `hidden` channels normalised in `groups`
    groups; time_dim sinusoidal features per time."""

    height: int = 8
    width: int = 8
    channels: int = 1
    hidden: int = 8
    groups: int = 4
    num_classes: int = 3
    time_dim: int = 8

    def __post_init__(self):
        for name in ("height", "width", "channels", "hidden", "groups", "num_classes", "time_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GroupNormFilmConfig.{name} must be a positive int, got {value!r}")
        if self.hidden % self.groups:
            raise ValueError(f"GroupNormFilmConfig.hidden ({self.hidden}) must be a multiple of groups ({self.groups})")


PRESETS = {
    "tiny": GroupNormFilmConfig(),
    "column": GroupNormFilmConfig(width=1),  # images one pixel wide
}
