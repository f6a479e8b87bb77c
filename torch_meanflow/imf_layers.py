"""Layers of the iMF / pMF networks (PyTorch), in the official torch branch's state-dict names.

Twin of `jax_meanflow.imf_layers`. A linear is `<name>._flax_linear.{weight,bias}`, RMSNorm's
parameter is `weight`. Attention goes through `torch_meanflow.attention.attention` (no SDPA
kernel under torch.func.jvp). Rotary tables: float64 `meanflow_common.imf_tables`, kept in
`FixedTables` buffers (not in the state dict).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torch_meanflow.attention import attention

__all__ = ["Linear", "RMSNorm", "rotate", "RoPEAttention", "SwiGLUMlp", "TransformerBlock", "FinalLayer"]


class Linear(nn.Module):
    """nn.Linear wrapped as the official `TorchLinear` (`_flax_linear`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self._flax_linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x):
        return self._flax_linear(x)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotate(x, cos, sin):
    """RoPE on adjacent pairs: x [B, N, H, d], cos/sin [M, d/2] on the last M tokens."""
    m = cos.shape[0]
    c, s = cos.to(x.dtype)[None, :, None, :], sin.to(x.dtype)[None, :, None, :]
    head, tail = x[:, : x.shape[1] - m], x[:, x.shape[1] - m:]
    pairs = tail.reshape(tail.shape[:-1] + (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    rot = torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(tail.shape)
    return torch.cat([head, rot], dim=1) if head.shape[1] else rot


class RoPEAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        d = hidden_size
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (Linear(d, d, bias=False) for _ in range(4))
        self.q_norm = RMSNorm(d // num_heads)
        self.k_norm = RMSNorm(d // num_heads)

    def forward(self, x, rope):
        b, n, _ = x.shape
        hd = self.hidden_size // self.num_heads
        q, k, v = (p(x).reshape(b, n, self.num_heads, hd) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = rotate(self.q_norm(q), *rope)
        k = rotate(self.k_norm(k), *rope)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.out_proj(out.transpose(1, 2).reshape(b, n, self.hidden_size))


class SwiGLUMlp(nn.Module):
    def __init__(self, hidden_size: int, hidden_features: int):
        super().__init__()
        self.w1 = Linear(hidden_size, hidden_features, bias=False)
        self.w3 = Linear(hidden_size, hidden_features, bias=False)
        self.w2 = Linear(hidden_features, hidden_size, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """x + attn(norm1 x) * attn_scale, then x + mlp(norm2 x) * mlp_scale (gates zero-init)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 8 / 3):
        super().__init__()
        self.norm1 = RMSNorm(hidden_size)
        self.attn = RoPEAttention(hidden_size, num_heads)
        self.norm2 = RMSNorm(hidden_size)
        self.mlp = SwiGLUMlp(hidden_size, int(hidden_size * mlp_ratio))
        self.attn_scale = nn.Parameter(torch.zeros(hidden_size))
        self.mlp_scale = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, x, rope):
        x = x + self.attn(self.norm1(x), rope) * self.attn_scale
        return x + self.mlp(self.norm2(x)) * self.mlp_scale


class FinalLayer(nn.Module):
    """RMSNorm + linear (zero-init): [B, N, D] -> [B, N, out]."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.norm = RMSNorm(hidden_size)
        self.linear = Linear(hidden_size, out_features)
        nn.init.zeros_(self.linear._flax_linear.weight)
        nn.init.zeros_(self.linear._flax_linear.bias)

    def forward(self, x):
        return self.linear(self.norm(x))
