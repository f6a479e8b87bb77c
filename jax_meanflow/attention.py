"""Scaled dot-product attention written out, so that `jax.jvp` and float64 both work.

Layout [B, H, N, d] to mirror `torch_meanflow.attention`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["attention"]


def attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, dropout_rng=None):
    """softmax(q k^T / sqrt(d)) v.

    q: [B, H, N, d], k, v: [B, H, M, d]; attn_mask: bool broadcastable to [B, H, N, M]
    (True = keep). Dropout on the weights when `dropout_p > 0` and `dropout_rng` is given.
    Returns [B, H, N, d].
    """
    if attn_mask is not None and is_causal:
        raise ValueError("give attn_mask or is_causal, not both")
    scores = jnp.einsum("bhnd,bhmd->bhnm", q * (1.0 / math.sqrt(q.shape[-1])), k)
    if is_causal:
        attn_mask = jnp.tril(jnp.ones((q.shape[-2], k.shape[-2]), dtype=bool))
    if attn_mask is not None:
        scores = jnp.where(attn_mask, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    if dropout_p > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_p, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - dropout_p), 0.0)
    return jnp.einsum("bhnm,bhmd->bhnd", weights, v)
