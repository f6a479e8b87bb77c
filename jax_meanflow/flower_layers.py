"""Building blocks of FLOWER's flow transformer (Flax linen; the reference).

Twin of `torch_meanflow.flower_layers`. Names follow FLOWER's torch modules where Flax
allows: `nn.Sequential` index i becomes the suffix `_i` (`mlp_0`, `adaLN_modulation_2`),
RmsNorm's torch `weight` is Flax `scale`, Dense kernels are [in, out]. Linear layers are
initialised like torch's nn.Linear (uniform +-1/sqrt(fan_in) for weight and bias), so both
backends start from the same distributions.

Dropout needs the 'dropout' rng when `train` is True. Shapes: B batch, T action window,
S conditioning tokens, D = dit_dim, H heads, d = D / H.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_meanflow.attention import attention
from jax_meanflow.layers import RmsNorm, modulate, timestep_embedding
from meanflow_common.tables import flower_control_frequencies, flower_timestep_frequencies

__all__ = [
    "RmsNorm",
    "stateless_norm",
    "find_multiple",
    "apply_rope",
    "torch_dense",
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


def stateless_norm(x, eps: float = 1e-6):
    """(x - mean) / sqrt(var + eps) over the last axis, biased two-pass variance, no parameters."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps)


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n."""
    return n if n % k == 0 else n + k - (n % k)


def apply_rope(x, cos, sin):
    """Rotate the two halves of the head dim: x [B, H, T, d], cos/sin [T, d/2] -> [B, H, T, d]."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_dense(features: int, fan_in: int, use_bias: bool = True, name: str | None = None) -> nn.Dense:
    """nn.Dense initialised as torch's nn.Linear(fan_in, features)."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Dense(features, use_bias=use_bias, kernel_init=_uniform(bound), bias_init=_uniform(bound), name=name)


def _dropout(x, rate: float, train: bool):
    return nn.Dropout(rate, deterministic=not train)(x)


class SwiGlu(nn.Module):
    """silu(fc1 x) * fc2 x -> dropout -> proj; hidden = 2/3 of 4D rounded up to 256, no biases."""

    dim: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        n_hidden = find_multiple(int(2 * 4 * self.dim / 3), 256)
        x = nn.silu(torch_dense(n_hidden, self.dim, False, "fc1")(x)) * torch_dense(n_hidden, self.dim, False, "fc2")(x)
        return torch_dense(self.dim, n_hidden, False, "proj")(_dropout(x, self.dropout, train))


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> GELU (erf) -> dropout -> fc2 -> dropout, with biases."""

    in_features: int
    hidden_features: int
    out_features: int
    drop: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jax.nn.gelu(torch_dense(self.hidden_features, self.in_features, name="fc1")(x), approximate=False)
        x = _dropout(x, self.drop, train)
        return _dropout(torch_dense(self.out_features, self.hidden_features, name="fc2")(x), self.drop, train)


class _AttentionCore(nn.Module):
    """Shared tail of both attentions: attention() with weight dropout, proj, residual dropout."""

    dim: int
    attn_pdrop: float
    resid_pdrop: float

    def attend(self, q, k, v, train: bool, is_causal: bool):
        rng = self.make_rng("dropout") if (train and self.attn_pdrop > 0.0) else None
        out = attention(q, k, v, is_causal=is_causal, dropout_p=self.attn_pdrop if train else 0.0, dropout_rng=rng)
        b, _, n, _ = out.shape
        out = torch_dense(self.dim, self.dim, False, "proj")(out.transpose(0, 2, 1, 3).reshape(b, n, self.dim))
        return _dropout(out, self.resid_pdrop, train)


class FlowerAttention(_AttentionCore):
    """Causal self-attention: fused qkv (no bias), per-head q/k RmsNorm, optional RoPE, proj."""

    n_heads: int = 1

    @nn.compact
    def __call__(self, x, rope=None, train: bool = False):
        """x [B, T, D], rope None or (cos, sin) [T, d/2] -> [B, T, D]."""
        b, n, c = x.shape
        hd = c // self.n_heads
        qkv = torch_dense(3 * c, c, False, "qkv")(x).reshape(b, n, 3, self.n_heads, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = RmsNorm(1e-6, name="q_norm")(q), RmsNorm(1e-6, name="k_norm")(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.attend(q, k, v, train, is_causal=True)


class FlowerCrossAttention(_AttentionCore):
    """Cross-attention to the conditioning tokens: separate q/k/v (no bias), q/k RmsNorm, proj."""

    n_heads: int = 1

    @nn.compact
    def __call__(self, x, context, train: bool = False):
        """x [B, T, D], context [B, S, D] -> [B, T, D]."""
        c = x.shape[-1]
        hd = c // self.n_heads

        def heads(y):
            return y.reshape(y.shape[0], y.shape[1], self.n_heads, hd).transpose(0, 2, 1, 3)

        q = RmsNorm(1e-6, name="q_norm")(heads(torch_dense(c, c, False, "q_proj")(x)))
        k = RmsNorm(1e-6, name="k_norm")(heads(torch_dense(c, c, False, "k_proj")(context)))
        v = heads(torch_dense(c, c, False, "v_proj")(context))
        return self.attend(q, k, v, train, is_causal=False)


class FlowBlock(nn.Module):
    """FLOWER's block: adaLN-modulated causal self-attention, cross-attention, SwiGLU.

    Its own adaLN is SiLU -> Linear(D, lora_dim) -> Linear(lora_dim, 6D); the shared
    controller's first six signals are added to it.
    """

    dim: int
    n_heads: int
    attn_pdrop: float
    resid_pdrop: float
    mlp_pdrop: float
    lora_dim: int = 256

    @nn.compact
    def __call__(self, cx, c, context, global_adaln, rope=None, train: bool = False):
        """cx [B, T, D], c [B, D], context [B, S, D], global_adaln: >= 6 arrays [B, D]."""
        d = self.dim
        mod = torch_dense(self.lora_dim, d, name="adaLN_modulation_1")(nn.silu(c))
        signals = jnp.split(torch_dense(6 * d, self.lora_dim, name="adaLN_modulation_2")(mod), 6, axis=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            s + g for s, g in zip(signals, global_adaln[:6])
        )
        drops = dict(attn_pdrop=self.attn_pdrop, resid_pdrop=self.resid_pdrop, n_heads=self.n_heads)
        x = modulate(RmsNorm(1e-6, name="norm1")(cx), shift_msa, scale_msa)
        cx = cx + gate_msa[:, None] * FlowerAttention(d, name="self_attn", **drops)(x, rope=rope, train=train)
        x = RmsNorm(1e-6, name="norm2")(cx)
        cx = cx + FlowerCrossAttention(d, name="cross_attn", **drops)(x, context, train=train)
        x = modulate(RmsNorm(1e-6, name="norm3")(cx), shift_mlp, scale_mlp)
        return cx + gate_mlp[:, None] * SwiGlu(d, self.mlp_pdrop, name="mlp")(x, train=train)


class TimestepEmbedder(nn.Module):
    """FLOWER's time embedder: cos/sin of t * 1000 * DiT frequencies -> Linear -> SiLU -> Linear."""

    hidden_size: int
    frequency_embedding_size: int = 256
    control: bool = False  # True: FLOWER's FreqEmbedder table (max_period 1000, no x1000)
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, t):
        """t [B] -> [B, hidden_size]."""
        fes = self.frequency_embedding_size
        freqs = flower_control_frequencies(fes) if self.control else flower_timestep_frequencies(fes, scale=self.time_scale)
        x = torch_dense(self.hidden_size, fes, name="mlp_0")(timestep_embedding(t, freqs))
        return torch_dense(self.hidden_size, self.hidden_size, name="mlp_2")(nn.silu(x))


def FreqEmbedder(hidden_size: int, frequency_embedding_size: int = 256, name: str | None = None):
    """FLOWER's control-frequency embedder (the torch class of the same name)."""
    return TimestepEmbedder(hidden_size, frequency_embedding_size, control=True, name=name)


class SharedAdaLNController(nn.Module):
    """SiLU -> Linear(D, 9D, no bias, zero init); FLOWER builds 9 signals with cross-attention
    and its blocks read the first 6."""

    dim: int
    num_signals: int = 9

    @nn.compact
    def __call__(self, global_cond):
        """[B, D] -> tuple of 9 arrays [B, D]."""
        dense = nn.Dense(self.num_signals * self.dim, use_bias=False, kernel_init=nn.initializers.zeros, name="modCX_1")
        return tuple(jnp.split(dense(nn.silu(global_cond)), self.num_signals, axis=-1))


class MeanFlowDecoder(nn.Module):
    """The seed guide's decoder: concat(features, h_emb) -> Linear, SiLU, Linear, SiLU, Linear.

    h_emb = TimestepEmbedder(h) (FLOWER's, x1000 frequencies), broadcast over the window.
    """

    dit_dim: int
    action_dim: int
    hidden_dim: int
    frequency_embedding_size: int = 256
    time_scale: float = 1000.0

    @nn.compact
    def __call__(self, z, h):
        """z [B, T, D], h [B] -> [B, T, A]."""
        h_emb = TimestepEmbedder(self.dit_dim, self.frequency_embedding_size, time_scale=self.time_scale,
                                 name="h_embedder")(h)
        h_emb = jnp.broadcast_to(h_emb[:, None], (z.shape[0], z.shape[1], self.dit_dim))
        x = jnp.concatenate([z, h_emb], axis=-1)
        x = nn.silu(torch_dense(self.hidden_dim, 2 * self.dit_dim, name="decoder_0")(x))
        x = nn.silu(torch_dense(self.hidden_dim, self.hidden_dim, name="decoder_2")(x))
        return torch_dense(self.action_dim, self.hidden_dim, name="decoder_4")(x)
