"""Configs of the improved MeanFlow (iMF) and pixel MeanFlow (pMF) networks.

Field names follow the official `imfDiT` / `pmfDiT` constructors. Presets reproduce the
official model partials (imfDiT_B_2 ... imfDiT_XL_2, pmfDiT_B_16 ... pmfDiT_H_32) plus small
ones for tests.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMFDiTConfig", "PMFDiTConfig", "IMF_PRESETS", "PMF_PRESETS", "DIGITS_IMF_PRESETS", "DIGITS_PMF_PRESETS"]


def _check_common(cfg) -> None:
    name = type(cfg).__name__
    for field in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads",
                  "num_classes", "num_class_tokens", "num_time_tokens", "num_cfg_tokens",
                  "num_interval_tokens", "frequency_embedding_size"):
        v = getattr(cfg, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}.{field} must be a positive int, got {v!r}")
    if not isinstance(cfg.aux_head_depth, int) or cfg.aux_head_depth < 1:
        raise ValueError(f"{name}.aux_head_depth must be a positive int, got {cfg.aux_head_depth!r}")
    if cfg.depth <= cfg.aux_head_depth:
        raise ValueError(f"{name}: depth ({cfg.depth}) must exceed aux_head_depth ({cfg.aux_head_depth}): "
                         "the shared trunk has depth - aux_head_depth blocks")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"{name}: hidden_size ({cfg.hidden_size}) must be divisible by num_heads ({cfg.num_heads})")
    if cfg.input_size % cfg.patch_size:
        raise ValueError(f"{name}: input_size ({cfg.input_size}) must be divisible by patch_size ({cfg.patch_size})")
    if cfg.frequency_embedding_size % 2:
        raise ValueError(f"{name}.frequency_embedding_size must be even, got {cfg.frequency_embedding_size}")
    if not cfg.mlp_ratio > 0 or int(cfg.hidden_size * cfg.mlp_ratio) < 1:
        raise ValueError(f"{name}.mlp_ratio must be positive, got {cfg.mlp_ratio!r}")


@dataclass(frozen=True)
class IMFDiTConfig:
    """imfDiT: latent input [B, input_size, input_size, in_channels] (JAX NHWC)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 8 / 3
    num_classes: int = 1000
    aux_head_depth: int = 8
    num_class_tokens: int = 8
    num_time_tokens: int = 4
    num_cfg_tokens: int = 4
    num_interval_tokens: int = 2
    frequency_embedding_size: int = 256
    eval: bool = False  # the inference network: no v heads (v_final_layer is kept, as official)

    def __post_init__(self):
        _check_common(self)
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(f"IMFDiTConfig: head dim {self.hidden_size // self.num_heads} must be even (RoPE)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def prefix_tokens(self) -> int:
        return self.num_class_tokens + self.num_cfg_tokens + 2 * self.num_interval_tokens + self.num_time_tokens

    @property
    def shared_depth(self) -> int:
        return self.depth - self.aux_head_depth


@dataclass(frozen=True)
class PMFDiTConfig(IMFDiTConfig):
    """pmfDiT: pixel input; a bottleneck patch embedder of `pca_channels` (official: 128 for
    hidden <= 1024, else 256) and a learned position embedding over all tokens."""

    input_size: int = 256
    patch_size: int = 16
    in_channels: int = 3
    depth: int = 16
    pca_channels: int = 128

    def __post_init__(self):
        _check_common(self)
        if self.head_dim % 4:
            raise ValueError(f"PMFDiTConfig: head dim {self.head_dim} must be a multiple of 4 (2-D RoPE)")
        if not isinstance(self.pca_channels, int) or self.pca_channels < 1:
            raise ValueError(f"PMFDiTConfig.pca_channels must be a positive int, got {self.pca_channels!r}")


IMF_PRESETS = {
    "B/2": IMFDiTConfig(depth=12, hidden_size=768, patch_size=2, num_heads=12, aux_head_depth=8),
    "M/2": IMFDiTConfig(depth=24, hidden_size=768, patch_size=2, num_heads=12, aux_head_depth=8),
    "L/2": IMFDiTConfig(depth=32, hidden_size=1024, patch_size=2, num_heads=16, aux_head_depth=8),
    "XL/2": IMFDiTConfig(depth=48, hidden_size=1024, patch_size=2, num_heads=16, aux_head_depth=8),
    "small": IMFDiTConfig(input_size=16, patch_size=2, in_channels=4, hidden_size=64, depth=4, num_heads=4,
                          aux_head_depth=2, num_classes=10, frequency_embedding_size=64),
    "tiny": IMFDiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=3, num_heads=2,
                         aux_head_depth=1, num_classes=5, num_class_tokens=2, num_time_tokens=2,
                         num_cfg_tokens=2, num_interval_tokens=1, frequency_embedding_size=16),
}

PMF_PRESETS = {
    "B/16": PMFDiTConfig(input_size=256, depth=16, hidden_size=768, patch_size=16, num_heads=12, aux_head_depth=8),
    "B/32": PMFDiTConfig(input_size=512, depth=16, hidden_size=768, patch_size=32, num_heads=12, aux_head_depth=8),
    "L/16": PMFDiTConfig(input_size=256, depth=32, hidden_size=1024, patch_size=16, num_heads=16, aux_head_depth=8),
    "L/32": PMFDiTConfig(input_size=512, depth=32, hidden_size=1024, patch_size=32, num_heads=16, aux_head_depth=8),
    "H/16": PMFDiTConfig(input_size=256, depth=48, hidden_size=1280, patch_size=16, num_heads=16, aux_head_depth=8,
                         pca_channels=256),
    "H/32": PMFDiTConfig(input_size=512, depth=48, hidden_size=1280, patch_size=32, num_heads=16, aux_head_depth=8,
                         pca_channels=256),
    "tiny": PMFDiTConfig(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=3, num_heads=2,
                         aux_head_depth=1, num_classes=5, num_class_tokens=2, num_time_tokens=2,
                         num_cfg_tokens=2, num_interval_tokens=1, frequency_embedding_size=16, pca_channels=6),
}

# The digits task's networks (8x8x1 images, 10 classes) for the imf / pmf training methods:
# "small" is as wide as the MeanFlow digits DiT (128) with 4 blocks in all (2 shared, one u and
# one v head block) and 5 prefix tokens, so that an update costs about twice MeanFlow's (the
# guidance forwards come on top of the JVP; docs/RESULTS.md has the measured costs).
_DIGITS = dict(input_size=8, patch_size=2, in_channels=1, num_classes=10)
_DIGITS_TINY = dict(hidden_size=32, depth=3, num_heads=2, aux_head_depth=1, num_class_tokens=2, num_time_tokens=2,
                    num_cfg_tokens=2, num_interval_tokens=1, frequency_embedding_size=16)
_DIGITS_SMALL = dict(hidden_size=128, depth=3, num_heads=4, aux_head_depth=1, num_class_tokens=2, num_time_tokens=1,
                     num_cfg_tokens=1, num_interval_tokens=1, frequency_embedding_size=64)
DIGITS_IMF_PRESETS = {
    "tiny": IMFDiTConfig(**_DIGITS, **_DIGITS_TINY),
    "small": IMFDiTConfig(**_DIGITS, **_DIGITS_SMALL),
}
DIGITS_PMF_PRESETS = {
    "tiny": PMFDiTConfig(**_DIGITS, **_DIGITS_TINY, pca_channels=4),
    "small": PMFDiTConfig(**_DIGITS, **_DIGITS_SMALL, pca_channels=16),
}
