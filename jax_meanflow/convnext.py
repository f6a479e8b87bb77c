"""ConvNeXt-V2 features in Flax, as pMF's `models/convnext.py` computes them, and the
`convnext_feature_distance` hook of pMF's perceptual loss.

Input [B, H, W, C] (NHWC); output [B, dims[-1]]: the final LayerNorm of the global average of
the last stage. The parameter tree is the official one (torch twin: `torch_meanflow.convnext`;
table: `parity/convert/tables/convnext.py`):
    downsample_layers_0/layers_0/{kernel,bias} (conv 4x4 s4), downsample_layers_0/layers_1/{weight,bias} (LN)
    downsample_layers_{1,2,3}/layers_0/{weight,bias} (LN), .../layers_1/{kernel,bias} (conv 2x2 s2)
    stages_{i}/layers_{j}/{dwconv (7x7 depthwise), norm, pwconv1, grn/{gamma,beta}, pwconv2}
    norm/{scale,bias} (Flax LayerNorm)
Convolutions pad "SAME" (Flax's default, kept: on inputs whose sides are multiples of 32 the
strided convs need no padding).

Pretrained weights: the official pMF uses the Hugging Face checkpoint
`facebook/convnextv2-base-22k-224` (preset "base"). Download its state dict yourself, read it with
`torch_meanflow.convnext.load_convnext_state_dict(path)` (Hugging Face or facebookresearch
names), and convert it with `parity.convert.engine.torch_to_jax(state, TABLE, config)` where
TABLE is `parity.convert.tables.convnext.TABLE` (this package cannot read torch files itself).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from meanflow_common.convnext_config import ConvNeXtConfig

__all__ = ["ConvNextLayerNorm", "ConvNextGRN", "ConvNextBlock", "ConvNeXtV2", "convnext_feature_distance"]


class ConvNextLayerNorm(nn.Module):
    """LayerNorm over the last axis with two-pass variance; parameters `weight`, `bias`."""

    dim: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (self.dim,))
        bias = self.param("bias", nn.initializers.zeros, (self.dim,))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
        return weight * ((x - mean) / jnp.sqrt(var + self.eps)) + bias


class ConvNextGRN(nn.Module):
    """Global response normalisation on [B, H, W, C]: gamma (x N(x)) + beta + x with
    G = sqrt(sum_HW x^2 + eps) (eps inside the root, as the official JAX code) and
    N = G / (mean_C G + eps)."""

    dim: int
    eps: float = 1e-6

    @nn.compact
    def __call__(self, x):
        gamma = self.param("gamma", nn.initializers.zeros, (1, 1, 1, self.dim))
        beta = self.param("beta", nn.initializers.zeros, (1, 1, 1, self.dim))
        g = jnp.sqrt(jnp.sum(x ** 2, axis=(1, 2), keepdims=True) + self.eps)
        n = g / (jnp.mean(g, axis=-1, keepdims=True) + self.eps)
        return gamma * (x * n) + beta + x


class ConvNextBlock(nn.Module):
    """x + pwconv2(GRN(GELU_erf(pwconv1(LN(dwconv7x7(x))))))."""

    dim: int
    eps: float = 1e-6

    def setup(self):
        self.dwconv = nn.Conv(self.dim, (7, 7), padding="SAME", feature_group_count=self.dim)
        self.norm = ConvNextLayerNorm(self.dim, self.eps)
        self.pwconv1 = nn.Dense(4 * self.dim)
        self.grn = ConvNextGRN(4 * self.dim, self.eps)
        self.pwconv2 = nn.Dense(self.dim)

    def __call__(self, x):
        h = self.pwconv1(self.norm(self.dwconv(x)))
        return x + self.pwconv2(self.grn(jax.nn.gelu(h, approximate=False)))


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 features: x [B, H, W, in_chans] -> [B, dims[-1]]."""

    config: ConvNeXtConfig

    def setup(self):
        c = self.config
        self.downsample_layers = [nn.Sequential([nn.Conv(c.dims[0], (4, 4), strides=(4, 4)),
                                                 ConvNextLayerNorm(c.dims[0], c.eps)])] + [
            nn.Sequential([ConvNextLayerNorm(c.dims[i], c.eps), nn.Conv(c.dims[i + 1], (2, 2), strides=(2, 2))])
            for i in range(3)
        ]
        self.stages = [nn.Sequential([ConvNextBlock(c.dims[i], c.eps) for _ in range(c.depths[i])]) for i in range(4)]
        self.norm = nn.LayerNorm(epsilon=c.eps, use_fast_variance=c.fast_variance)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.config.in_chans:
            raise ValueError(f"ConvNeXtV2 needs images [B, H, W, {self.config.in_chans}], got shape {x.shape}")
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(jnp.mean(x, axis=(1, 2)))


def convnext_feature_distance(model: ConvNeXtV2, params) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """pMF's ConvNeXt hook: (pred_x, x) [B, H, W, C] -> [B], sum over features of
    (f(pred_x) - f(x))^2 with f = model.apply(params, .). `params`: the variables dict
    ({"params": ...}) or the bare parameter tree. The official code first applies a paired
    random resized crop to 224 x 224 to both images; wrap the hook to add one."""
    variables = params if "params" in params else {"params": params}

    def distance(pred_x, x):
        return jnp.sum((model.apply(variables, pred_x) - model.apply(variables, x)) ** 2, axis=-1)

    return distance
