"""Building blocks of FLOWER's flow transformer (PyTorch port).

Module and parameter names follow flower/models/networks/transformers.py of
intuitive-robots/flower_vla_calvin so that FLOWER state dicts map by name. Dropout is
functional and follows the explicit `train` argument (not `module.training`), which
mirrors the Flax twin; under `torch.func.jvp` one mask serves primal and tangent.

Shapes: B batch, T action window, S conditioning tokens, D = dit_dim, H heads, d = D / H.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meanflow_common.tables import flower_control_frequencies, flower_timestep_frequencies
from torch_meanflow.attention import attention
from torch_meanflow.layers import FixedTables, RmsNorm, modulate, timestep_embedding

__all__ = [
    "RmsNorm",
    "stateless_norm",
    "find_multiple",
    "apply_rope",
    "SwiGlu",
    "Mlp",
    "FlowerAttention",
    "FlowerCrossAttention",
    "FlowBlock",
    "TimestepEmbedder",
    "FreqEmbedder",
    "SharedAdaLNController",
    "MeanFlowDecoder",
]


def stateless_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the last axis, biased variance, no parameters."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - (n % k)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the head dim: x [B, H, T, d], cos/sin [T, d/2] -> [B, H, T, d]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class SwiGlu(nn.Module):
    """silu(fc1 x) * fc2 x -> dropout -> proj; hidden = 2/3 of 4D rounded up to 256, no biases."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        n_hidden = find_multiple(int(2 * 4 * dim / 3), 256)
        self.fc1 = nn.Linear(dim, n_hidden, bias=False)
        self.fc2 = nn.Linear(dim, n_hidden, bias=False)
        self.proj = nn.Linear(n_hidden, dim, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = F.silu(self.fc1(x)) * self.fc2(x)
        return self.proj(F.dropout(x, self.dropout, training=train))


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU (erf) -> dropout -> fc2 -> dropout, with biases."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = drop

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = F.dropout(F.gelu(self.fc1(x), approximate="none"), self.drop, training=train)
        return F.dropout(self.fc2(x), self.drop, training=train)


class FlowerAttention(nn.Module):
    """Causal self-attention: fused qkv (no bias), per-head q/k RmsNorm, optional RoPE, proj."""

    def __init__(self, dim: int, n_heads: int, attn_pdrop: float, resid_pdrop: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RmsNorm(self.head_dim, eps=1e-6)
        self.k_norm = RmsNorm(self.head_dim, eps=1e-6)
        self.attn_pdrop, self.resid_pdrop = attn_pdrop, resid_pdrop

    def forward(self, x: torch.Tensor, rope=None, train: bool = False) -> torch.Tensor:
        """x [B, T, D], rope None or (cos, sin) [T, d/2] -> [B, T, D]."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        # FLOWER passes a causal mask AND is_causal=True; is_causal alone is the same mask.
        out = attention(q, k, v, is_causal=True, dropout_p=self.attn_pdrop, training=train)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return F.dropout(out, self.resid_pdrop, training=train)


class FlowerCrossAttention(nn.Module):
    """Cross-attention to the conditioning tokens: separate q/k/v (no bias), q/k RmsNorm, proj."""

    def __init__(self, dim: int, n_heads: int, attn_pdrop: float, resid_pdrop: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = RmsNorm(self.head_dim, eps=1e-6)
        self.k_norm = RmsNorm(self.head_dim, eps=1e-6)
        self.attn_pdrop, self.resid_pdrop = attn_pdrop, resid_pdrop

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.n_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, context: torch.Tensor, train: bool = False) -> torch.Tensor:
        """x [B, T, D], context [B, S, D] -> [B, T, D]."""
        b, n, c = x.shape
        q = self.q_norm(self._heads(self.q_proj(x)))
        k = self.k_norm(self._heads(self.k_proj(context)))
        v = self._heads(self.v_proj(context))
        out = attention(q, k, v, dropout_p=self.attn_pdrop, training=train)
        out = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return F.dropout(out, self.resid_pdrop, training=train)


class FlowBlock(nn.Module):
    """FLOWER's block: adaLN-modulated causal self-attention, cross-attention, SwiGLU.

    Its own adaLN is SiLU -> Linear(D, lora_dim) -> Linear(lora_dim, 6D); the shared
    controller's first six signals are added to it.
    """

    def __init__(self, dim: int, n_heads: int, attn_pdrop: float, resid_pdrop: float,
                 mlp_pdrop: float, lora_dim: int = 256):
        super().__init__()
        self.norm1 = RmsNorm(dim, eps=1e-6)
        self.norm2 = RmsNorm(dim, eps=1e-6)
        self.norm3 = RmsNorm(dim, eps=1e-6)
        self.self_attn = FlowerAttention(dim, n_heads, attn_pdrop, resid_pdrop)
        self.cross_attn = FlowerCrossAttention(dim, n_heads, attn_pdrop, resid_pdrop)
        self.mlp = SwiGlu(dim, dropout=mlp_pdrop)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim), nn.Linear(lora_dim, 6 * dim))

    def forward(self, cx, c, context, global_adaln, rope=None, train: bool = False):
        """cx [B, T, D], c [B, D], context [B, S, D], global_adaln: >= 6 tensors [B, D]."""
        signals = self.adaLN_modulation(c).chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            s + g for s, g in zip(signals, global_adaln[:6])
        )
        x = modulate(self.norm1(cx), shift_msa, scale_msa)
        cx = cx + gate_msa.unsqueeze(1) * self.self_attn(x, rope=rope, train=train)
        cx = cx + self.cross_attn(self.norm2(cx), context, train=train)
        x = modulate(self.norm3(cx), shift_mlp, scale_mlp)
        return cx + gate_mlp.unsqueeze(1) * self.mlp(x, train=train)


class TimestepEmbedder(FixedTables):
    """FLOWER's time embedder: cos/sin of t * 1000 * DiT frequencies -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.set_table("freqs", flower_timestep_frequencies(frequency_embedding_size, scale=time_scale))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> [B, hidden_size]."""
        return self.mlp(timestep_embedding(t, self.freqs))


class FreqEmbedder(TimestepEmbedder):
    """FLOWER's control-frequency embedder: the same MLP on max_period-1000 sinusoids, no x1000."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__(hidden_size, frequency_embedding_size)
        self.set_table("freqs", flower_control_frequencies(frequency_embedding_size))


class SharedAdaLNController(nn.Module):
    """SiLU -> Linear(D, 9D, no bias, zero init); FLOWER builds 9 signals with cross-attention
    and its blocks read the first 6."""

    NUM_SIGNALS = 9

    def __init__(self, dim: int, global_conddim: int):
        super().__init__()
        self.modCX = nn.Sequential(nn.SiLU(), nn.Linear(global_conddim, self.NUM_SIGNALS * dim, bias=False))
        nn.init.zeros_(self.modCX[-1].weight)

    def forward(self, global_cond: torch.Tensor):
        """[B, D] -> tuple of 9 tensors [B, D]."""
        return self.modCX(global_cond).chunk(self.NUM_SIGNALS, dim=-1)


class MeanFlowDecoder(nn.Module):
    """The seed guide's decoder: concat(features, h_emb) -> Linear, SiLU, Linear, SiLU, Linear.

    h_emb = TimestepEmbedder(h) (FLOWER's, x1000 frequencies), broadcast over the window.
    """

    def __init__(self, dit_dim: int, action_dim: int, hidden_dim: int, frequency_embedding_size: int = 256,
                 time_scale: float = 1000.0):
        super().__init__()
        self.h_embedder = TimestepEmbedder(dit_dim, frequency_embedding_size, time_scale)
        self.decoder = nn.Sequential(
            nn.Linear(2 * dit_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, action_dim),
        )

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """z [B, T, D], h [B] -> [B, T, A]."""
        h_emb = self.h_embedder(h).unsqueeze(1).expand(-1, z.shape[1], -1)
        return self.decoder(torch.cat([z, h_emb], dim=-1))

