"""The built-in DiT pair: `jax_meanflow.dit.DiT` (NHWC, the official checkpoint tree) and
`torch_meanflow.dit.DiT` (NCHW, facebookresearch/DiT names); class labels with a null class,
CFG folded into the target. Its negative controls are the ones the README tabulates."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from meanflow_common.config import DIT_PRESETS, DiTConfig, MeanFlowConfig
from parity.convert.tables.dit import TABLE
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Arch, BenchSpec, ModuleMapSpec
from parity.core.controls import OBJECTIVE_CONTROLS, Control
from parity.core.inputs import InputBundle, cover_guidance_window, drop_mask_numpy, sample_tr_numpy

DIT_MEANFLOW = MeanFlowConfig(data_proportion=0.5, class_dropout_prob=0.3)


def make_bundle(variant, batch: int, seed: int, **_options) -> InputBundle:
    """Images NHWC [B, H, W, C], labels int [B] in [0, num_classes), noise, (t, r), drop mask."""
    cfg = variant.model_cfg
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.input_size, cfg.input_size, cfg.in_channels)
    x = rng.standard_normal(shape) * 0.5
    y = rng.integers(0, cfg.num_classes, size=batch)
    e = rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, variant.mf_cfg)
    drop = drop_mask_numpy(rng, batch, variant.mf_cfg.class_dropout_prob)
    t, r = cover_guidance_window(t, r, drop, variant.mf_cfg)
    return InputBundle("dit", x, y, e, t, r, drop)


def _jax_build(cfg):
    from jax_meanflow.dit import DiT, init_dit

    return DiT(cfg), lambda key, dtype: init_dit(cfg, key, dtype)


def _jax_shapes(cfg):
    from jax_meanflow.dit import param_shapes

    return param_shapes(cfg)


def _jax_u_fn(module, params, dropout_rng=None):
    from jax_meanflow.dit import make_u_fn

    return make_u_fn(module, params)  # the DiT has no dropout


def _torch_build(cfg):
    from torch_meanflow.dit import DiT

    return DiT(cfg)


def _torch_u_fn(module):
    from torch_meanflow.dit import make_u_fn

    return make_u_fn(module)


def _labels_jax(y, dtype):
    import jax.numpy as jnp

    return jnp.asarray(y, dtype=jnp.int32)


def _labels_torch(y, dtype, device):
    import torch

    return torch.as_tensor(y, dtype=torch.long, device=device)


def _variants(cfg):
    return [
        ("cfg kappa>0", cfg, replace(DIT_MEANFLOW, t_start=0.5)),
        ("cfg kappa=0", cfg, replace(DIT_MEANFLOW, kappa=0.0, omega=2.0, t_end=0.8)),
        ("no cfg", cfg, replace(DIT_MEANFLOW, guidance_eq="", class_dropout_prob=0.0)),
    ]


# ----------------------------------------------------------------------------------
# Negative controls written for this network (the objective ones fit any network)
# ----------------------------------------------------------------------------------


def _gelu_erf(module):
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.GELU):
            m.approximate = "none"


def _layernorm_eps(module):
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5


def _untransposed_conv(state: dict) -> dict:
    """The Flax HWIO kernel reshaped to OIHW instead of transposed."""
    key = "x_embedder.proj.weight"
    w = np.asarray(state[key])
    hwio = w.transpose(2, 3, 1, 0)
    return {**state, key: np.ascontiguousarray(hwio.reshape(w.shape))}


CONTROLS = OBJECTIVE_CONTROLS + (
    Control("gelu_erf", "GELU erf instead of tanh in the DiT MLP", model=_gelu_erf, module="blocks.0.mlp"),
    Control("layernorm_eps", "LayerNorm eps 1e-5 instead of 1e-6", model=_layernorm_eps, module="blocks.0.norm1"),
    Control("untransposed_conv", "patch-embedding conv kernel reshaped, not transposed",
            state=_untransposed_conv, module="x_embedder"),
)

def bench_sizes() -> dict:
    """The benchmark's DiT sizes (`python -m parity bench --sizes`): no guidance (the bench's
    --guidance turns CFG on), class dropout 0.1."""
    mf = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.1)
    small = dict(patch_size=4, in_channels=4, num_classes=10)
    return {
        "dit-tiny": BenchSpec(DIT_PRESETS["tiny"], mf, "smoke test: 2 blocks, width 64, 16 tokens"),
        "dit-s": BenchSpec(DiTConfig(input_size=16, hidden_size=128, depth=4, num_heads=4, **small), mf,
                           "4 blocks, width 128, 16 tokens"),
        "dit-m": BenchSpec(DiTConfig(input_size=32, hidden_size=384, depth=6, num_heads=6, **small), mf,
                           "6 blocks, width 384, 64 tokens"),
        "dit-b4": BenchSpec(DIT_PRESETS["DiT-B/4"], mf, "DiT-B/4 on 32x32x4 latents: 12 blocks, width 768, 64 tokens"),
    }


DIT = Arch(
    name="dit",
    presets=DIT_PRESETS,
    default_preset="tiny",
    table=TABLE,
    make_bundle=make_bundle,
    jax_build=_jax_build,
    jax_u_fn=_jax_u_fn,
    jax_shapes=_jax_shapes,
    torch_build=_torch_build,
    torch_u_fn=_torch_u_fn,
    jax_y=_labels_jax,
    torch_y=_labels_torch,
    variants=_variants,
    null_label=lambda cfg: cfg.num_classes,
    layout=CHANNELS_LAST_TO_FIRST,
    module_map=ModuleMapSpec(
        pairs=(("blocks/layers_{i}/norm1", "blocks.{i}.norm1"), ("blocks/layers_{i}/norm2", "blocks.{i}.norm2"),
               ("final_layer/norm_final", "final_layer.norm_final")),
        wrappers=("_flax_linear", "_flax_embedding"),
        block="blocks.{i}",
    ),
    controls=CONTROLS,
    bench_sizes=bench_sizes(),
)
