"""The GroupNorm + FiLM example network in Flax (imports jax/flax only); no `train` keyword.

u = conv_out(silu(film(norm(conv_in(norm_in(z)))))), film: h * (1 + scale) + shift with
(scale, shift) = film(silu(embedding of (t, h, y))); z and u [B, H, W, C].
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from examples.groupnorm_film.config import GroupNormFilmConfig


def time_embedding(t, time_dim: int):
    """t [B] -> [B, time_dim]: cos and sin of t times frequencies 1, 2, 4, ..."""
    freqs = jnp.asarray(2.0 ** np.arange(time_dim // 2, dtype=np.float64), dtype=t.dtype)
    args = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class GroupNormFilmNet(nn.Module):
    config: GroupNormFilmConfig

    @nn.compact
    def __call__(self, z, t, h, y):
        """z [B, H, W, C], t [B], h [B], y int [B] -> u [B, H, W, C]."""
        cfg = self.config
        emb = jnp.concatenate([time_embedding(t, cfg.time_dim), time_embedding(h, cfg.time_dim)], axis=-1)
        cond = nn.Dense(cfg.hidden, name="time_fc")(emb) + nn.Embed(cfg.num_classes + 1, cfg.hidden,
                                                                     name="label_embed")(y)
        x = nn.GroupNorm(num_groups=1, epsilon=1e-5, use_fast_variance=False, name="norm_in")(z)
        x = nn.Conv(cfg.hidden, (3, 3), padding="SAME", name="conv_in")(x)
        x = nn.GroupNorm(num_groups=cfg.groups, epsilon=1e-5, use_fast_variance=False, name="norm")(x)
        scale, shift = jnp.split(nn.Dense(2 * cfg.hidden, name="film")(nn.silu(cond)), 2, axis=-1)
        x = x * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
        return nn.Conv(cfg.channels, (3, 3), padding="SAME", name="conv_out")(nn.silu(x))


def init_params(cfg: GroupNormFilmConfig, key, dtype=jnp.float32):
    """The Flax parameter tree (without the "params" key), every leaf in `dtype`."""
    z = jnp.zeros((1, cfg.height, cfg.width, cfg.channels), dtype)
    t = jnp.zeros((1,), dtype)
    params = GroupNormFilmNet(cfg).init(key, z, t, t, jnp.zeros((1,), jnp.int32))["params"]
    return jax.tree_util.tree_map(lambda a: a.astype(dtype), params)


def make_u_fn(module: GroupNormFilmNet, params):
    """u_fn(z, t, h, y, train) -> u; the network has no dropout, so `train` is dropped."""
    def u_fn(z, t, h, y, train=False):
        return module.apply({"params": params}, z, t, h, y)

    return u_fn
