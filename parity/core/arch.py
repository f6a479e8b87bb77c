"""The architectures the parity harness knows: how to build each side and its inputs.

An `Arch` bundles, for one network, the two model builders, the input bundle, the
conversion table name and the conditioning. Everything else in the harness is generic.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS, MeanFlowConfig, get_preset
from parity.core.inputs import InputBundle, drop_mask_numpy, make_dit_bundle, sample_tr_numpy


@dataclass(frozen=True)
class Variant:
    """One configuration of the compared pair: model config + objective config."""

    arch: str
    name: str
    model_cfg: Any
    mf_cfg: MeanFlowConfig


@dataclass(frozen=True)
class Arch:
    name: str
    presets: dict
    table: str
    make_bundle: Callable[[Variant, int, int], InputBundle]
    jax_build: Callable  # (model_cfg) -> (module, init_fn(key, dtype) -> params)
    jax_u_fn: Callable  # (module, params) -> u_fn
    torch_build: Callable  # (model_cfg) -> torch module
    torch_u_fn: Callable  # (module) -> u_fn
    jax_y: Callable  # (bundle, dtype) -> y on the JAX side
    torch_y: Callable  # (bundle, dtype, device) -> y on the torch side
    null_y: Callable  # (variant, batch) -> numpy null labels or None


# ----------------------------------------------------------------------------------
# DiT: class-conditional images, CFG in the target
# ----------------------------------------------------------------------------------


def _dit_jax_build(cfg):
    from jax_meanflow.dit import DiT, init_dit

    return DiT(cfg), lambda key, dtype: init_dit(cfg, key, dtype)


def _dit_jax_u_fn(module, params):
    from jax_meanflow.dit import make_u_fn

    return make_u_fn(module, params)


def _dit_torch_build(cfg):
    from torch_meanflow.dit import DiT

    return DiT(cfg)


def _dit_torch_u_fn(module):
    from torch_meanflow.dit import make_u_fn

    return make_u_fn(module)


def _labels_jax(bundle, dtype):
    import jax.numpy as jnp

    return jnp.asarray(bundle.y, dtype=jnp.int32)


def _labels_torch(bundle, dtype, device):
    import torch

    return torch.as_tensor(bundle.y, dtype=torch.long, device=device)


DIT = Arch(
    name="dit",
    presets=DIT_PRESETS,
    table="dit",
    make_bundle=lambda v, batch, seed: make_dit_bundle(v.model_cfg, v.mf_cfg, batch, seed),
    jax_build=_dit_jax_build,
    jax_u_fn=_dit_jax_u_fn,
    torch_build=_dit_torch_build,
    torch_u_fn=_dit_torch_u_fn,
    jax_y=_labels_jax,
    torch_y=_labels_torch,
    null_y=lambda v, batch: np.full((batch,), v.model_cfg.num_classes, dtype=np.int64)
    if (v.mf_cfg.guidance_eq or v.mf_cfg.class_dropout_prob > 0)
    else None,
)


# ----------------------------------------------------------------------------------
# FLOWER: action chunks conditioned on tokens; no class guidance
# ----------------------------------------------------------------------------------


def _flower_bundle(v: Variant, batch: int, seed: int) -> InputBundle:
    cfg = v.model_cfg
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.act_window_size, cfg.action_dim)
    x = np.tanh(rng.standard_normal(shape))  # actions normalised to [-1, 1]
    n_tokens = 5
    y = {
        "tokens": rng.standard_normal((batch, n_tokens, cfg.cond_dim)),
        "frequency_embeds": rng.standard_normal((batch, cfg.dit_dim)),
    }
    if cfg.use_proprio:
        y["proprio"] = rng.standard_normal((batch, cfg.proprio_dim))
    e = rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, v.mf_cfg)
    drop = drop_mask_numpy(rng, batch, v.mf_cfg.class_dropout_prob)
    return InputBundle("flower", x, y, e, t, r, drop)


def _flower_jax_build(cfg):
    from jax_meanflow.flower import FlowerTransformer, init_flower

    return FlowerTransformer(cfg), lambda key, dtype: init_flower(cfg, key, dtype)


def _flower_jax_u_fn(module, params):
    from jax_meanflow.flower import make_u_fn

    return make_u_fn(module, params)


def _flower_torch_build(cfg):
    from torch_meanflow.flower import FlowerTransformer

    return FlowerTransformer(cfg)


def _flower_torch_u_fn(module):
    from torch_meanflow.flower import make_u_fn

    return make_u_fn(module)


def _cond_jax(bundle, dtype):
    import jax.numpy as jnp

    from jax_meanflow.flower import FlowerCond

    return FlowerCond(**{k: jnp.asarray(a, dtype=dtype) for k, a in bundle.y.items()})


def _cond_torch(bundle, dtype, device):
    import torch

    from torch_meanflow.flower import FlowerCond

    return FlowerCond(**{k: torch.as_tensor(a, dtype=dtype, device=device) for k, a in bundle.y.items()})


FLOWER = Arch(
    name="flower",
    presets=FLOWER_PRESETS,
    table="flower",
    make_bundle=_flower_bundle,
    jax_build=_flower_jax_build,
    jax_u_fn=_flower_jax_u_fn,
    torch_build=_flower_torch_build,
    torch_u_fn=_flower_torch_u_fn,
    jax_y=_cond_jax,
    torch_y=_cond_torch,
    null_y=lambda v, batch: None,
)

ARCHS = {"dit": DIT, "flower": FLOWER}


def get_arch(name: str) -> Arch:
    return get_preset(ARCHS, name, "architecture")


# Objective settings for FLOWER: no class labels, so no CFG and no class dropout.
FLOWER_MEANFLOW = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5)
DIT_MEANFLOW = MeanFlowConfig(data_proportion=0.5, class_dropout_prob=0.3)


def default_variants(dit_preset: str = "tiny", flower_preset: str = "tiny") -> list[Variant]:
    """The default suite: both architectures with the options that change the computation.

    Dropout is off for the comparison (masks cannot match across frameworks).
    """
    dit = get_preset(DIT_PRESETS, dit_preset, "DiT preset")
    flower = replace(
        get_preset(FLOWER_PRESETS, flower_preset, "FLOWER preset"),
        attn_pdrop=0.0, resid_pdrop=0.0, mlp_pdrop=0.0, proprio_pdrop=0.0,
    )
    out = [
        Variant("dit", "cfg kappa>0", dit, DIT_MEANFLOW),
        Variant("dit", "cfg kappa=0", dit, replace(DIT_MEANFLOW, kappa=0.0, omega=2.0, t_end=0.8)),
        Variant("dit", "no cfg", dit, replace(DIT_MEANFLOW, guidance_eq="", class_dropout_prob=0.0)),
    ]
    for placement in ("adaln", "decoder"):
        for pos in ("rope", "learned"):
            cfg = replace(flower, h_placement=placement, position_mode=pos)
            out.append(Variant("flower", f"{placement} {pos}", cfg, FLOWER_MEANFLOW))
    return out
