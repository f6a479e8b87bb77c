"""The GroupNorm + FiLM example's table and `Arch`."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from examples.groupnorm_film.config import PRESETS, GroupNormFilmConfig
from parity import (CHANNELS_LAST_TO_FIRST, Arch, InputBundle, MeanFlowConfig, Rule, Table, cover_guidance_window,
                    drop_mask_numpy, sample_tr_numpy)

MEANFLOW = MeanFlowConfig(data_proportion=0.5, class_dropout_prob=0.3)


def _layer(name: str, kind: str) -> list:
    return [Rule(f"{name}/kernel", f"{name}.weight", kind), Rule(f"{name}/bias", f"{name}.bias", "bias")]


def _norm(name: str) -> list:
    return [Rule(f"{name}/scale", f"{name}.weight", "scale"), Rule(f"{name}/bias", f"{name}.bias", "bias")]


TABLE = Table(name="groupnorm_film", rules=(
    *_layer("time_fc", "linear_kernel"), Rule("label_embed/embedding", "label_embed.weight", "embedding"),
    *_norm("norm_in"), *_layer("conv_in", "conv_kernel"), *_norm("norm"), *_layer("film", "linear_kernel"),
    *_layer("conv_out", "conv_kernel"),
))


def make_bundle(variant, batch: int, seed: int, **_options) -> InputBundle:
    """float64: x, e [B, H, W, C] (NHWC), labels y int [B], (t, r) [B], the drop mask [B]."""
    cfg = variant.model_cfg
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.height, cfg.width, cfg.channels)
    x = 0.5 * rng.standard_normal(shape)
    y = rng.integers(0, cfg.num_classes, size=batch)
    e = rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, variant.mf_cfg)
    drop = drop_mask_numpy(rng, batch, variant.mf_cfg.class_dropout_prob)
    t, r = cover_guidance_window(t, r, drop, variant.mf_cfg)
    return InputBundle("groupnorm_film", x, y, e, t, r, drop)


def jax_build(cfg):
    from examples.groupnorm_film.flax_net import GroupNormFilmNet, init_params

    return GroupNormFilmNet(cfg), lambda key, dtype: init_params(cfg, key, dtype)


def jax_u_fn(module, params, dropout_rng=None):
    from examples.groupnorm_film.flax_net import make_u_fn

    return make_u_fn(module, params)


def torch_build(cfg):
    from examples.groupnorm_film.torch_net import GroupNormFilmNet

    return GroupNormFilmNet(cfg)


def torch_u_fn(module):
    from examples.groupnorm_film.torch_net import make_u_fn

    return make_u_fn(module)


def jax_labels(y, dtype):
    import jax.numpy as jnp

    return jnp.asarray(y, jnp.int32)


def torch_labels(y, dtype, device):
    import torch

    return torch.as_tensor(y, dtype=torch.long, device=device)


def variants(cfg):
    """Guidance in the target, and plain flow matching."""
    return [("cfg", cfg, MEANFLOW), ("no cfg", cfg, replace(MEANFLOW, guidance_eq="", class_dropout_prob=0.0))]


ARCH = Arch(name="groupnorm_film", presets=PRESETS, default_preset="tiny", table=TABLE, make_bundle=make_bundle,
            jax_build=jax_build, jax_u_fn=jax_u_fn, torch_build=torch_build, torch_u_fn=torch_u_fn,
            jax_y=jax_labels, torch_y=torch_labels, variants=variants, null_label=lambda cfg: cfg.num_classes,
            layout=CHANNELS_LAST_TO_FIRST)

__all__ = ["ARCH", "PRESETS", "TABLE", "GroupNormFilmConfig"]
