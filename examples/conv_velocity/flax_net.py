"""The example velocity network in Flax (imports jax/flax only).

    u = ConvVelocityNet(cfg).apply({"params": params}, z, t, h, y)   # z, u [B, S, S, C] (NHWC)

cond = time_fc2(silu(time_fc1([emb(t), emb(h)]))) + label_embed(y)  [B, width];
x = conv_in(z); per block: x + conv2(silu(modulate(conv1(silu(x)), cond))); u = conv_out(silu(x)).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from examples.conv_velocity.config import ConvVelocityConfig, time_frequencies


def time_embedding(t, time_dim: int):
    """t [B] -> [B, time_dim]: cos and sin of t times the shared frequency table."""
    freqs = jnp.asarray(time_frequencies(time_dim), dtype=t.dtype)
    args = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x, cond):
        """x [B, S, S, width], cond [B, width] -> [B, S, S, width]."""
        h = nn.Conv(self.width, (3, 3), padding="SAME", name="conv1")(nn.silu(x))
        scale, shift = jnp.split(nn.Dense(2 * self.width, name="modulation")(nn.silu(cond)), 2, axis=-1)
        h = h * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
        h = nn.Conv(self.width, (3, 3), padding="SAME", name="conv2")(nn.silu(h))
        return x + h


class ConvVelocityNet(nn.Module):
    config: ConvVelocityConfig

    @nn.compact
    def __call__(self, z, t, h, y, train: bool = False):
        """z [B, S, S, C], t [B], h [B], y int [B] -> u [B, S, S, C]."""
        cfg = self.config
        if z.ndim != 4 or z.shape[1:] != (cfg.image_size, cfg.image_size, cfg.channels):
            raise ValueError(f"z must be NHWC [B, {cfg.image_size}, {cfg.image_size}, {cfg.channels}], got {z.shape}")
        emb = jnp.concatenate([time_embedding(t, cfg.time_dim), time_embedding(h, cfg.time_dim)], axis=-1)
        cond = nn.Dense(cfg.width, name="time_fc2")(nn.silu(nn.Dense(cfg.width, name="time_fc1")(emb)))
        cond = cond + nn.Embed(cfg.num_classes + 1, cfg.width, name="label_embed")(y)
        x = nn.Conv(cfg.width, (3, 3), padding="SAME", name="conv_in")(z)
        for i in range(cfg.depth):
            x = ResBlock(cfg.width, name=f"blocks_{i}")(x, cond)
        return nn.Conv(cfg.channels, (3, 3), padding="SAME", name="conv_out")(nn.silu(x))


def init_params(cfg: ConvVelocityConfig, key, dtype=jnp.float32):
    """The Flax parameter tree (without the "params" key), every leaf cast to `dtype`."""
    z = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels), dtype)
    t = jnp.zeros((1,), dtype)
    params = ConvVelocityNet(cfg).init(key, z, t, t, jnp.zeros((1,), jnp.int32))["params"]
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


def make_u_fn(module: ConvVelocityNet, params):
    """u_fn(z, t, h, y, train) -> u, as the MeanFlow objective calls the network."""
    def u_fn(z, t, h, y, train=False):
        return module.apply({"params": params}, z, t, h, y, train=train)

    return u_fn
