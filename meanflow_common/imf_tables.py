"""Rotary tables of the iMF / pMF networks, float64 NumPy, shared by both backends.

The official code builds them (and the timestep frequencies) in float32 and rotates in
complex64; here they are float64 so that float64 runs stay float64 end to end (a float64
comparison against the official float32 tables is therefore capped near 1e-7).
Rotation pairs adjacent features (x[2k], x[2k+1]) as one complex number, as the official
`view(complex64)` does: (a, b) -> (a cos - b sin, a sin + b cos).
"""
from __future__ import annotations

import numpy as np

__all__ = ["imf_rope_cos_sin", "pmf_rope_cos_sin"]


def _freqs(dim: int, theta: float) -> np.ndarray:
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def imf_rope_cos_sin(head_dim: int, seq_len: int, theta: float = 10000.0):
    """1-D RoPE over the whole sequence: (cos, sin), each float64 [seq_len, head_dim // 2]."""
    angles = np.outer(np.arange(seq_len, dtype=np.float64), _freqs(head_dim, theta))
    return np.cos(angles), np.sin(angles)


def pmf_rope_cos_sin(head_dim: int, num_patches: int, theta: float = 10000.0):
    """2-D RoPE of the patch tokens (row frequencies, then column frequencies):
    (cos, sin), each float64 [num_patches, head_dim // 2]."""
    g = int(round(num_patches ** 0.5))
    if g * g != num_patches:
        raise ValueError(f"2-D RoPE needs a square patch grid, got {num_patches} patches")
    f = _freqs(head_dim // 2, theta)
    pos = np.arange(g, dtype=np.float64)
    fh = np.broadcast_to(np.outer(pos, f)[:, None, :], (g, g, f.size))
    fw = np.broadcast_to(np.outer(pos, f)[None, :, :], (g, g, f.size))
    angles = np.concatenate([fh, fw], axis=-1).reshape(num_patches, 2 * f.size)
    return np.cos(angles), np.sin(angles)
