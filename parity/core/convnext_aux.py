"""pMF's ConvNeXt-V2 feature network as an Arch for `parity.AuxNet` (the frozen second network
of the perceptual terms): `CONVNEXT`, called as `features(images) -> [B, F]` (`FEATURES`).

The suite runs pMF's two perceptual terms (LPIPS and ConvNeXt) through two randomly
initialised tiny ConvNeXt pairs (preset "parity", the same weights on both sides, each from
its own fixed seed), so that the masking, weighting and gradient path of both terms are
compared; "base" is the official `facebook/convnextv2-base-22k-224` shape, for pretrained
weights (`AuxNet(CONVNEXT, FEATURES, preset="base", params=...)`: docs/EXTENDING.md).
The network has no MeanFlow call (it is no velocity network): its u_fn refuses, naming it.
Importing this module loads no framework.
"""
from __future__ import annotations

from dataclasses import replace

from meanflow_common.convnext_config import CONVNEXT_PRESETS
from parity.convert.tables.convnext import TABLE
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Adapter, Arch
from parity.core.objective import Convention


def _check_features(arch, side, out, args) -> None:
    shape, x = tuple(getattr(out, "shape", ())), args[0]
    if len(shape) != 2 or shape[0] != x.shape[0]:
        raise ValueError(f"{arch.name}: the {side} feature network returned shape {shape} for images of shape "
                         f"{tuple(x.shape)}; features must be [B, F]")


FEATURES = Convention("features", "features(images) -> [B, F] (images of the data's shape and layout)",
                      check=_check_features)

# The Flax final LayerNorm's fast variance is not the torch twin's two-pass one: off, so that
# float32 runs compare one formula.
PRESETS = {"parity": replace(CONVNEXT_PRESETS["tiny"], fast_variance=False),
           "tiny": CONVNEXT_PRESETS["tiny"], "base": CONVNEXT_PRESETS["base"]}


def _jax_build(cfg):
    import jax.numpy as jnp

    from jax_meanflow.convnext import ConvNeXtV2

    module = ConvNeXtV2(cfg)

    def init(key, dtype):
        x = jnp.zeros((1, 32, 32, cfg.in_chans), dtype)
        return module.init(key, x)["params"]

    return module, init


def _jax_shapes(cfg):
    import jax
    import jax.numpy as jnp

    module, _ = _jax_build(cfg)
    x = jax.ShapeDtypeStruct((1, 32, 32, cfg.in_chans), jnp.float32)
    return jax.eval_shape(lambda k, x: module.init(k, x)["params"], jax.random.PRNGKey(0), x)


def random_features_params(seed: int):
    """`AuxNet.params` of a randomly initialised ConvNeXt: every leaf random from `seed`
    (jax_meanflow.params.random_arrays), the LayerNorm and GRN scales near 1 rather than
    near 0, so that the stacked normalisations do not amplify rounding (a feature network
    of scales ~0.1 turns 1e-16 input differences into 1e-11 distance differences)."""
    def params(cfg):
        import jax
        import numpy as np

        from jax_meanflow.params import random_arrays

        tree = random_arrays(_jax_shapes(cfg), seed, dtype=np.dtype(np.float32))
        rng = np.random.default_rng(seed + 1)

        def fix(path, a):
            name = str(getattr(path[-1], "key", path[-1]))
            if name in ("weight", "gamma"):
                return (1.0 + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
            return a

        return jax.tree_util.tree_map_with_path(fix, tree)

    return params


def _torch_build(cfg):
    from torch_meanflow.convnext import ConvNeXtV2

    return ConvNeXtV2(cfg)


def _jax_features(module, params, dropout_rng=None):
    return lambda x: module.apply({"params": params}, x)


def _torch_features(module):
    return lambda x: module(x)


def _no_u_fn(*_args, **_kwargs):
    raise TypeError("convnext is a feature network (features(images) -> [B, F]); it has no MeanFlow u_fn")


def _no_data(*_args, **_kwargs):
    raise TypeError("convnext is a feature network run inside an objective; it draws no data of its own")


CONVNEXT = Arch(
    name="convnext",
    presets=PRESETS,
    default_preset="parity",
    table=TABLE,
    jax_build=_jax_build,
    jax_u_fn=_no_u_fn,
    jax_shapes=_jax_shapes,
    torch_build=_torch_build,
    torch_u_fn=_no_u_fn,
    jax_y=lambda y, dtype: y,
    torch_y=lambda y, dtype, device: y,
    variants=lambda cfg: [],
    layout=CHANNELS_LAST_TO_FIRST,
    make_data=_no_data,
    adapters={FEATURES: Adapter(jax=_jax_features, torch=_torch_features)},
)
