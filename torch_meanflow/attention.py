"""Scaled dot-product attention that also works under forward-mode AD.

`F.scaled_dot_product_attention` has no forward-mode derivative for its flash,
memory-efficient and CPU-flash kernels: under `torch.func.jvp` (or
`torch.autograd.forward_ad`) they raise NotImplementedError. Only the math kernel
differentiates forward. `attention` keeps the fast kernel for plain forward passes and
switches to the math kernel when any input carries a tangent.

FLOWER's code passes an explicit causal mask AND `is_causal=True`; the math kernel
rejects that combination ("Explicit attn_mask should not be set when is_causal=True"),
so this function takes one or the other, never both.
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["attention", "explicit_attention", "has_tangent"]


def has_tangent(*tensors: torch.Tensor) -> bool:
    """True when any tensor is inside a forward-AD transform (torch.func.jvp or forward_ad)."""
    for x in tensors:
        if torch._C._functorch.is_functorch_wrapped_tensor(x):
            return True
        if fwAD.unpack_dual(x).tangent is not None:
            return True
    return False


def explicit_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, training=False):
    """softmax(q k^T / sqrt(d)) v written out; the reference the fast paths are checked against.

    q: [B, H, N, d], k, v: [B, H, M, d], attn_mask: bool [N, M] or [B, 1|H, N, M] (True = keep).
    Returns [B, H, N, d].
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    if is_causal:
        n, m = q.shape[-2], k.shape[-2]
        attn_mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0 and training:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, training=False):
    """Attention as `F.scaled_dot_product_attention`, differentiable in forward mode.

    Shapes as in `explicit_attention`. Give `attn_mask` (bool, True = keep) or
    `is_causal`, not both. Dropout on the attention weights is applied only when training.
    """
    if attn_mask is not None and is_causal:
        raise ValueError("give attn_mask or is_causal, not both (the math kernel rejects both)")
    p = dropout_p if training else 0.0
    if has_tangent(q, k, v):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
