"""Layers of the iMF / pMF networks (Flax linen), in the official checkpoint tree.

Twin of `torch_meanflow.imf_layers`. Names as the official `models/torch_models.py`:
RMSNorm's parameter is `kernel`, a linear is `<name>/_flax_linear/{kernel,bias}`.
Rotary tables come from `meanflow_common.imf_tables` (float64 NumPy), so float64 works.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jax_meanflow.attention import attention
from jax_meanflow.layers import Linear

__all__ = ["RMSNorm", "rotate", "RoPEAttention", "SwiGLUMlp", "TransformerBlock", "FinalLayer", "PrefixEmbedding"]


class RMSNorm(nn.Module):
    """x * 1/sqrt(mean(x^2) + eps) * kernel over the last axis; parameter `kernel` [D] (ones)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        w = self.param("kernel", nn.initializers.ones, (x.shape[-1],))
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps) * w


def rotate(x, cos, sin):
    """RoPE on adjacent pairs: x [B, N, H, d], cos/sin float64 NumPy [M, d/2] applied to the
    last M tokens (M = N for iMF, the patch tokens for pMF)."""
    m = cos.shape[0]
    c = jnp.asarray(cos.astype(x.dtype))[None, :, None, :]
    s = jnp.asarray(sin.astype(x.dtype))[None, :, None, :]
    head, tail = x[:, : x.shape[1] - m], x[:, x.shape[1] - m :]
    pairs = tail.reshape(tail.shape[:-1] + (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rot = jnp.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(tail.shape)
    return jnp.concatenate([head, rot], axis=1) if head.shape[1] else rot


class RoPEAttention(nn.Module):
    """Self-attention with RMS-normed q, k and RoPE; x [B, N, D] -> [B, N, D]."""

    hidden_size: int
    num_heads: int

    def setup(self):
        d = self.hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(d, use_bias=False) for _ in range(4))
        self.q_norm = RMSNorm()
        self.k_norm = RMSNorm()

    def __call__(self, x, rope):
        b, n, _ = x.shape
        hd = self.hidden_size // self.num_heads
        q, k, v = (p(x).reshape(b, n, self.num_heads, hd) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = rotate(self.q_norm(q), *rope)
        k = rotate(self.k_norm(k), *rope)
        out = attention(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, n, self.hidden_size))


class SwiGLUMlp(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    hidden_size: int
    hidden_features: int

    def setup(self):
        self.w1 = Linear(self.hidden_features, use_bias=False)
        self.w3 = Linear(self.hidden_features, use_bias=False)
        self.w2 = Linear(self.hidden_size, use_bias=False)

    def __call__(self, x):
        return self.w2(nn.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """x + attn(norm1 x) * attn_scale, then x + mlp(norm2 x) * mlp_scale (gates zero-init)."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 8 / 3

    def setup(self):
        d = self.hidden_size
        self.norm1 = RMSNorm()
        self.attn = RoPEAttention(d, self.num_heads)
        self.norm2 = RMSNorm()
        self.mlp = SwiGLUMlp(d, int(d * self.mlp_ratio))
        self.attn_scale = self.param("attn_scale", nn.initializers.zeros, (d,))
        self.mlp_scale = self.param("mlp_scale", nn.initializers.zeros, (d,))

    def __call__(self, x, rope):
        x = x + self.attn(self.norm1(x), rope) * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale


class FinalLayer(nn.Module):
    """RMSNorm + linear (zero-init): [B, N, D] -> [B, N, p * p * C]."""

    out_features: int

    def setup(self):
        self.norm = RMSNorm()
        self.linear = Linear(self.out_features, kernel_init=nn.initializers.zeros)

    def __call__(self, x):
        return self.linear(self.norm(x))


class PrefixEmbedding(nn.Module):
    """pMF's label table: parameter `embedding` [1, N, D] (official layout), ids [B] -> [B, D]."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, ids):
        std = 1.0 / np.sqrt(self.features)
        table = self.param("embedding", nn.initializers.normal(std), (1, self.num_embeddings, self.features))
        return table[0, ids]
