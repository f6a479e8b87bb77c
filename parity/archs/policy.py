"""The built-in FLOWER policy pair: the flow transformer behind the built-in observation
encoder, `jax_meanflow.policy.PolicyNet` and `torch_meanflow.policy.FlowerPolicy` (table
"policy": `model/...` and `encoder/mlp_{0,2}`). The conditioning is the observation batch
[B, obs_dim] itself, so a reach run's checkpoint is checked (`--arch policy --checkpoint`)
and converted (`convert --arch policy`) as the trainers wrote it."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from meanflow_common.config import POLICY_PRESETS
from parity.archs.flower import FLOWER_MEANFLOW, flower_set_dropout
from parity.convert.tables.policy import TABLE
from parity.core.arch import Arch, ModuleMapSpec
from parity.core.controls import Control
from parity.core.inputs import InputBundle, drop_mask_numpy, sample_tr_numpy
from parity.core.tolerances import F32


def make_bundle(variant, batch: int, seed: int, **_options) -> InputBundle:
    """Actions in [-1, 1] [B, T, A]; y: observations [B, obs_dim]; noise, (t, r), drop mask."""
    cfg = variant.model_cfg
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.act_window_size, cfg.action_dim)
    x = np.tanh(rng.standard_normal(shape))
    y = rng.standard_normal((batch, cfg.obs_dim))
    e = rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, variant.mf_cfg)
    drop = drop_mask_numpy(rng, batch, variant.mf_cfg.class_dropout_prob)
    return InputBundle("policy", x, y, e, t, r, drop)


def _jax_build(cfg):
    from jax_meanflow.policy import FlowerPolicy, PolicyNet

    def init(key, dtype):
        import jax

        seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1]) if not isinstance(key, int) else key
        return FlowerPolicy(cfg, cfg.obs_dim, num_tokens=cfg.num_tokens).init(seed, dtype)

    return PolicyNet(cfg, cfg.obs_dim, cfg.num_tokens), init


def _jax_u_fn(module, params, dropout_rng=None):
    from jax_meanflow.policy import make_u_fn

    return make_u_fn(module, params, dropout_rng=dropout_rng)


def _torch_build(cfg):
    from torch_meanflow.policy import FlowerPolicy

    return FlowerPolicy(cfg, obs_dim=cfg.obs_dim, num_tokens=cfg.num_tokens)


def _torch_u_fn(module):
    from torch_meanflow.policy import make_u_fn

    return make_u_fn(module)


def _obs_jax(y, dtype):
    import jax.numpy as jnp

    return jnp.asarray(y, dtype=dtype)


def _obs_torch(y, dtype, device):
    import torch

    return torch.as_tensor(np.ascontiguousarray(y), dtype=dtype, device=device)


def _variants(cfg):
    """Both h placements, RoPE; dropout off (masks cannot match across frameworks)."""
    cfg = flower_set_dropout(cfg, False)
    return [(f"{placement} rope", replace(cfg, h_placement=placement), FLOWER_MEANFLOW)
            for placement in ("adaln", "decoder")]


def _encoder_gelu_tanh(module):
    """The encoder's GELU in its tanh form (FLOWER's encoder uses erf): a port's slip."""
    import torch

    module.encoder.mlp[1] = torch.nn.GELU(approximate="tanh")


POLICY = Arch(
    name="policy",
    presets=POLICY_PRESETS,
    default_preset="tiny",
    table=TABLE,
    make_bundle=make_bundle,
    jax_build=_jax_build,
    jax_u_fn=_jax_u_fn,
    torch_build=_torch_build,
    torch_u_fn=_torch_u_fn,
    jax_y=_obs_jax,
    torch_y=_obs_torch,
    variants=_variants,
    module_map=ModuleMapSpec(block="model.dit.{i}"),
    # the transformer's: u_tgt and loss_per_sample are dominated by h * du/dt
    tolerances={"float32": {"u_tgt": F32["du_dt"], "loss_per_sample": F32["du_dt"]}},
    tolerance_reason="the FLOWER transformer's: u_tgt and loss_per_sample are dominated by h*du/dt (x1000 time "
                     "frequencies make |du/dt| ~ 1000 |u|), so they get du/dt's budget 1e-5",
    dropout=lambda cfg: max(cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop),
    set_dropout=lambda cfg, on: flower_set_dropout(cfg, on),
    controls=(Control("encoder_gelu_tanh", "tanh GELU in the observation encoder instead of erf",
                      model=_encoder_gelu_tanh, module="encoder"),),
)
