"""Generic layers shared by the DiT and FLOWER networks (Flax linen).

Twin of `torch_meanflow.layers`. The parameter names follow the official MeanFlow
checkpoints: a torch-style `Linear` holds a Flax Dense named `_flax_linear`, so a tree
reads e.g. `t_embedder/mlp/layers_0/_flax_linear/kernel`.

Dtypes: nothing here hard-codes float32. Constant tables come from
`meanflow_common.tables` (float64 NumPy) and are cast to the working dtype; Flax layers
compute in the promoted dtype of their input and parameters.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from meanflow_common.tables import timestep_frequencies

__all__ = [
    "modulate",
    "timestep_embedding",
    "Linear",
    "TimestepEmbedder",
    "LayerNorm",
    "RmsNorm",
    "Mlp",
]

Initializer = Callable[..., Any]


def modulate(x, shift, scale):
    """x [B, N, D], shift/scale [B, D] -> x * (1 + scale) + shift, broadcast over N."""
    return x * (1 + scale[:, None]) + shift[:, None]


def _float_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)


def timestep_embedding(t, freqs: np.ndarray):
    """Sinusoidal features of t [B] -> [B, 2 * len(freqs)], concat(cos(t f), sin(t f)).

    `freqs` is a float64 NumPy table (e.g. `timestep_frequencies`), cast to t's float dtype
    (an integer t is promoted to the default float dtype).
    """
    t = jnp.asarray(t)
    if t.ndim != 1:
        raise ValueError(f"times must have shape [B], got {t.shape}")
    dtype = _float_dtype(t)
    args = t.astype(dtype)[:, None] * jnp.asarray(np.asarray(freqs).astype(dtype))[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Linear(nn.Module):
    """Dense layer wrapped as in the official code (`<name>/_flax_linear/{kernel,bias}`).

    Kernel [in, out] (the torch weight transposed). Default init: xavier-uniform, zero bias.
    """

    features: int
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        dense = nn.Dense(
            self.features,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            name="_flax_linear",
        )
        return dense(x)


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, hidden_size]: sinusoid(frequency_embedding_size) -> Linear -> SiLU -> Linear.

    `freq_scale` multiplies the float64 frequency table before the cast (FLOWER uses 1000;
    the DiT uses 1). Linear weights normal(0.02), biases zero, as in the reference.
    Parameters: `mlp/layers_0/_flax_linear/*`, `mlp/layers_2/_flax_linear/*`.
    """

    hidden_size: int
    frequency_embedding_size: int = 256
    max_period: float = 10000.0
    freq_scale: float = 1.0

    def setup(self):
        init = nn.initializers.normal(stddev=0.02)
        self.mlp = nn.Sequential(
            [Linear(self.hidden_size, kernel_init=init), nn.silu, Linear(self.hidden_size, kernel_init=init)]
        )

    def __call__(self, t):
        freqs = timestep_frequencies(self.frequency_embedding_size, self.max_period) * self.freq_scale
        emb = timestep_embedding(t, freqs)
        if self.frequency_embedding_size % 2:  # odd size: the reference pads one zero feature
            emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
        return self.mlp(emb)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis without affine parameters (biased variance, like torch).

    `use_fast_variance=False`: E[x^2] - E[x]^2 loses precision on inputs with a large mean.
    """

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        norm = nn.LayerNorm(epsilon=self.eps, use_bias=False, use_scale=False, use_fast_variance=False)
        return norm(x)


class RmsNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * scale over the last axis (timm's RmsNorm; torch `weight`).

    Parameter: `scale` [D], ones at init (only when `affine`).
    """

    eps: float = 1e-6
    affine: bool = True
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        return y


class Mlp(nn.Module):
    """timm Mlp: fc1 (D -> hidden) -> GELU -> fc2 (hidden -> out, default D).

    `approximate="tanh"` is the DiT's GELU, "none" the erf form (FLOWER's encoder).
    `wrapped=True` names the layers `fc1/_flax_linear/*` (official DiT tree); False gives
    plain Dense layers `fc1/*`.
    """

    hidden_features: int
    out_features: int | None = None
    approximate: str = "tanh"
    use_bias: bool = True
    wrapped: bool = True
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        out = self.out_features or x.shape[-1]
        layer = Linear if self.wrapped else nn.Dense
        kw = dict(use_bias=self.use_bias, kernel_init=self.kernel_init, bias_init=self.bias_init)
        x = layer(self.hidden_features, name="fc1", **kw)(x)
        if self.approximate not in ("tanh", "none"):
            raise ValueError(f"approximate must be 'tanh' or 'none', got {self.approximate!r}")
        x = jax.nn.gelu(x, approximate=self.approximate == "tanh")
        return layer(out, name="fc2", **kw)(x)
