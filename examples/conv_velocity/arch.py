"""The example's `Arch`: everything the harness, converter, debugger and benchmark need.

`ARCH` is the correct port; `BROKEN` the same pair with block 1 of the torch network built as
`BrokenResBlock` (a modulation without its "1 +"), which every check must fail and the
debugger must blame on `blocks.1`. `VARIANTS` is a list of variants (also accepted by
`--arch examples.conv_velocity:VARIANTS`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from examples.conv_velocity.config import PRESETS
from examples.conv_velocity.table import TABLE
from meanflow_common.config import MeanFlowConfig
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Arch, ModuleMapSpec, Variant
from parity.core.inputs import InputBundle, cover_guidance_window, drop_mask_numpy, sample_tr_numpy

# Half the samples with r = t, at least one label dropped to the null class.
MEANFLOW = MeanFlowConfig(data_proportion=0.5, class_dropout_prob=0.3)


def make_data(cfg, batch: int, rng: np.random.Generator, **_options):
    """float64 images x [B, S, S, C] (NHWC, the JAX layout) and labels y int [B] from `rng`:
    the data alone, around which an objective other than MeanFlow draws its randomness."""
    shape = (batch, cfg.image_size, cfg.image_size, cfg.channels)
    x = 0.5 * rng.standard_normal(shape)
    y = rng.integers(0, cfg.num_classes, size=batch)
    return x, y


def make_bundle(variant, batch: int, seed: int, **_options) -> InputBundle:
    """float64: images x, noise e [B, S, S, C] (NHWC, the JAX layout), labels y int [B], (t, r) [B], drop mask."""
    rng = np.random.default_rng(seed)
    x, y = make_data(variant.model_cfg, batch, rng)
    e = rng.standard_normal(x.shape)
    t, r = sample_tr_numpy(rng, batch, variant.mf_cfg)
    drop = drop_mask_numpy(rng, batch, variant.mf_cfg.class_dropout_prob)
    t, r = cover_guidance_window(t, r, drop, variant.mf_cfg)  # kept samples inside and outside [t_start, t_end]
    return InputBundle("conv_velocity", x, y, e, t, r, drop)


def jax_build(cfg):
    from examples.conv_velocity.flax_net import ConvVelocityNet, init_params

    return ConvVelocityNet(cfg), lambda key, dtype: init_params(cfg, key, dtype)


def jax_u_fn(module, params, dropout_rng=None):
    from examples.conv_velocity.flax_net import make_u_fn

    return make_u_fn(module, params)  # no dropout


def torch_u_fn(module):
    from examples.conv_velocity.torch_net import make_u_fn

    return make_u_fn(module)


def jax_labels(y, dtype):
    import jax.numpy as jnp

    return jnp.asarray(y, jnp.int32)


def torch_labels(y, dtype, device):
    import torch

    return torch.as_tensor(y, dtype=torch.long, device=device)


def variants(cfg):
    """CFG with kappa > 0 in the target, and plain flow-matching targets without guidance."""
    return [("cfg", cfg, MEANFLOW), ("no cfg", cfg, replace(MEANFLOW, guidance_eq="", class_dropout_prob=0.0))]


def _torch_build(broken_block):
    def build(cfg):
        from examples.conv_velocity.torch_net import ConvVelocityNet

        return ConvVelocityNet(cfg, broken_block=broken_block)

    return build


_COMMON = dict(
    presets=PRESETS, default_preset="tiny", table=TABLE, make_bundle=make_bundle, make_data=make_data,
    jax_build=jax_build,
    jax_u_fn=jax_u_fn, torch_u_fn=torch_u_fn, jax_y=jax_labels, torch_y=torch_labels, variants=variants,
    null_label=lambda cfg: cfg.num_classes, layout=CHANNELS_LAST_TO_FIRST, module_map=ModuleMapSpec(block="blocks.{i}"),
)

ARCH = Arch(name="conv_velocity", torch_build=_torch_build(None), **_COMMON)
BROKEN = Arch(name="conv_velocity_broken", torch_build=_torch_build(1), **_COMMON)

VARIANTS = [Variant(ARCH, "cfg small", PRESETS["small"], MEANFLOW)]
