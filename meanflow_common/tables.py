"""Constant tables computed once in float64 NumPy and shared by both backends.

Both backends cast these arrays to their working dtype instead of recomputing them
with their own exp/sin/cos, which removes one honest source of cross-framework
difference.
"""
from __future__ import annotations

import math

import numpy as np


def timestep_frequencies(dim: int = 256, max_period: float = 10000.0) -> np.ndarray:
    """Frequencies of the DiT sinusoidal time embedding.

    Returns float64 [dim // 2]: exp(-log(max_period) * k / half), k = 0 .. half - 1.
    The embedding of t is concat(cos(t * f), sin(t * f)) (cos half first, as in GLIDE/DiT).
    """
    half = dim // 2
    return np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)


def _sincos_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0**omega  # [D/2]
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, D]


def sincos_2d_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed MAE-style 2-D sin-cos position embedding, float64 [grid_size**2, embed_dim].

    The first half of the channels encodes one grid axis and the second half the other,
    each as sin then cos; the order of the axes follows the reference (meshgrid w first).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be a multiple of 4")
    grid_h = np.arange(grid_size, dtype=np.float64)
    grid_w = np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w goes first, as in MAE
    emb_h = _sincos_1d(embed_dim // 2, grid[0])
    emb_w = _sincos_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


# ----------------------------------------------------------------------------------
# FLOWER's flow transformer
# ----------------------------------------------------------------------------------


def flower_timestep_frequencies(
    dim: int = 256, max_period: float = 10000.0, scale: float = 1000.0
) -> np.ndarray:
    """Frequencies of FLOWER's TimestepEmbedder, float64 [dim // 2].

    scale * exp(-log(max_period) * k / half), k = 0 .. half - 1. FLOWER multiplies the
    DiT frequencies by 1000 (times t in [0, 1] play the role of DiT's steps in [0, 1000]);
    the largest argument is then 1000 * t, where float32 sin/cos ulps are ~1e-4, hence
    float64 here. The embedding is concat(cos(t * f), sin(t * f)).
    """
    half = dim // 2
    return scale * np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)


def flower_control_frequencies(dim: int = 256) -> np.ndarray:
    """Frequencies of FLOWER's FreqEmbedder (control-frequency embedding), float64 [dim // 2].

    Same sinusoid as the timestep embedding but max_period 1000 and no x1000 scale.
    """
    return flower_timestep_frequencies(dim, max_period=1000.0, scale=1.0)


def rope_frequencies(head_dim: int, theta: float = 32.0) -> np.ndarray:
    """Rotary frequencies theta ** (-2k / head_dim), k = 0 .. head_dim/2 - 1, float64."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_cos_sin(head_dim: int, seq_len: int, theta: float = 32.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) of position * frequency, each float64 [seq_len, head_dim // 2].

    Used in the half-split form of FLOWER's apply_rotary_pos_emb: with x = [x1, x2]
    (halves of the head dim), x_rot = [x1 cos - x2 sin, x2 cos + x1 sin].
    """
    angles = np.arange(seq_len, dtype=np.float64)[:, None] * rope_frequencies(head_dim, theta)[None]
    return np.cos(angles), np.sin(angles)
