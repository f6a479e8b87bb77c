"""The built-in FLOWER pair: FLOWER's flow transformer with the MeanFlow interval h, in Flax
(`jax_meanflow.flower`) and torch (`torch_meanflow.flower`); conditioning tokens, no class
labels (so no guidance and no class dropout)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from meanflow_common.config import FLOWER_PRESETS, MeanFlowConfig
from parity.convert.tables.flower import TABLE
from parity.core.arch import Arch, BenchSpec, ModuleMapSpec
from parity.core.controls import Control
from parity.core.inputs import InputBundle, drop_mask_numpy, sample_tr_numpy
from parity.core.tolerances import F32

FLOWER_MEANFLOW = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5)


def make_bundle(variant, batch: int, seed: int, tokens: int = 5) -> InputBundle:
    """Actions in [-1, 1] [B, T, A]; y: {"tokens": [B, tokens, cond_dim], "frequency_embeds":
    [B, dit_dim], "proprio": [B, proprio_dim] when used}; noise, (t, r), drop mask."""
    cfg = variant.model_cfg
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.act_window_size, cfg.action_dim)
    x = np.tanh(rng.standard_normal(shape))  # actions normalised to [-1, 1]
    y = {
        "tokens": rng.standard_normal((batch, tokens, cfg.cond_dim)),
        "frequency_embeds": rng.standard_normal((batch, cfg.dit_dim)),
    }
    if cfg.use_proprio:
        y["proprio"] = rng.standard_normal((batch, cfg.proprio_dim))
    e = rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, variant.mf_cfg)
    drop = drop_mask_numpy(rng, batch, variant.mf_cfg.class_dropout_prob)
    return InputBundle("flower", x, y, e, t, r, drop)


def _jax_build(cfg):
    from jax_meanflow.flower import FlowerTransformer, init_flower

    return FlowerTransformer(cfg), lambda key, dtype: init_flower(cfg, key, dtype)


def _jax_shapes(cfg):
    from jax_meanflow.flower import param_shapes

    return param_shapes(cfg)


def _jax_u_fn(module, params, dropout_rng=None):
    from jax_meanflow.flower import make_u_fn

    return make_u_fn(module, params, dropout_rng=dropout_rng)


def _torch_build(cfg):
    from torch_meanflow.flower import FlowerTransformer

    return FlowerTransformer(cfg)


def _torch_u_fn(module):
    from torch_meanflow.flower import make_u_fn

    return make_u_fn(module)


def _cond_jax(y, dtype):
    import jax.numpy as jnp

    from jax_meanflow.flower import FlowerCond

    return FlowerCond(**{k: jnp.asarray(a, dtype=dtype) for k, a in y.items()})


def _cond_torch(y, dtype, device):
    import torch

    from torch_meanflow.flower import FlowerCond

    return FlowerCond(**{k: torch.as_tensor(a, dtype=dtype, device=device) for k, a in y.items()})


# The dropout check's rates (non-zero, the proprio encoder's larger as in FLOWER's config).
TEST_RATES = dict(attn_pdrop=0.1, resid_pdrop=0.1, mlp_pdrop=0.1, proprio_pdrop=0.2)


def flower_set_dropout(cfg, on: bool):
    """`cfg` with the test rates (on) or every dropout rate 0 (off). The proprio rate only
    where the proprio encoder is used: elsewhere it changes nothing, and a checkpoint's
    recorded config keeps whatever it had."""
    rates = {k: v for k, v in TEST_RATES.items() if cfg.use_proprio or k != "proprio_pdrop"}
    return replace(cfg, **({k: v if on else 0.0 for k, v in rates.items()}))


def _variants(cfg):
    """Both h placements x both position modes; dropout off (masks cannot match across frameworks)."""
    cfg = flower_set_dropout(cfg, False)
    return [(f"{placement} {pos}", replace(cfg, h_placement=placement, position_mode=pos), FLOWER_MEANFLOW)
            for placement in ("adaln", "decoder") for pos in ("rope", "learned")]


def _dropout(cfg) -> float:
    return max(cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop, cfg.proprio_pdrop if cfg.use_proprio else 0.0)


def _drop_time_scale(module):
    """FLOWER multiplies the time frequencies by 1000; a port that forgets it."""
    module.t_embedder.set_table("freqs", module.t_embedder.table("freqs") / 1000.0)


def bench_sampler(backend: str, cfg, batch: int, device: str, num_steps: int, tokens: int):
    """One timed sampling call: torch, `FlowerPolicy.sample_actions` (eager: encoder and
    transformer, observations [B, 32]); jax, the jitted `generate` on the transformer alone
    (`tokens` conditioning tokens given). Random weights (every parameter)."""
    if backend == "torch":
        import torch

        from torch_meanflow.params import randomize_params
        from torch_meanflow.policy import FlowerPolicy

        policy = FlowerPolicy(cfg, obs_dim=32).to(device)
        randomize_params(policy, 0)
        policy.eval()
        obs = torch.randn(batch, 32, generator=torch.Generator().manual_seed(0)).to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def run():
            policy.sample_actions(obs, num_steps=num_steps)
            sync()

        return run
    import jax
    import jax.numpy as jnp

    from jax_meanflow.flower import FlowerCond, FlowerTransformer, init_flower, make_u_fn
    from jax_meanflow.params import randomize_params as jax_randomize
    from jax_meanflow.solver import make_generate

    module = FlowerTransformer(cfg)
    params = jax_randomize(init_flower(cfg, 0), 0)
    rng = np.random.default_rng(0)
    cond = FlowerCond(jnp.asarray(rng.standard_normal((batch, tokens, cfg.cond_dim)), jnp.float32),
                      jnp.asarray(rng.standard_normal((batch, cfg.dit_dim)), jnp.float32))
    e = jnp.asarray(rng.standard_normal((batch, cfg.act_window_size, cfg.action_dim)), jnp.float32)
    sample = make_generate(lambda p: make_u_fn(module, p), num_steps=num_steps)

    def run():
        jax.block_until_ready(sample(params, e, cond))

    return run


def bench_sizes() -> dict:
    """The benchmark's FLOWER sizes (`python -m parity bench --sizes`): 64 conditioning tokens
    per sample (the bench's --tokens overrides them), sampling latency timed."""
    mf = replace(FLOWER_MEANFLOW, data_proportion=0.75)
    spec = dict(mf_cfg=mf, bundle_options={"tokens": 64}, sampler=bench_sampler)
    return {
        "flower-tiny": BenchSpec(FLOWER_PRESETS["tiny"], what="smoke test: 2 layers, width 32", **spec),
        "flower-small": BenchSpec(FLOWER_PRESETS["small"], what="4 layers, width 128", **spec),
        "flower-base": BenchSpec(FLOWER_PRESETS["base"], what="12 layers, width 512 (FLOWERVLA constructor defaults)",
                                 **spec),
        "flower-default": BenchSpec(FLOWER_PRESETS["default"], what="18 layers, width 1024 (conf/model/flower.yaml)",
                                    **spec),
    }


FLOWER = Arch(
    name="flower",
    presets=FLOWER_PRESETS,
    default_preset="tiny",
    table=TABLE,
    make_bundle=make_bundle,
    jax_build=_jax_build,
    jax_u_fn=_jax_u_fn,
    jax_shapes=_jax_shapes,
    torch_build=_torch_build,
    torch_u_fn=_torch_u_fn,
    jax_y=_cond_jax,
    torch_y=_cond_torch,
    variants=_variants,
    module_map=ModuleMapSpec(block="dit.{i}"),
    # FLOWER's time embedding multiplies the frequencies by 1000, so |du/dt| is ~1000x |u|
    # (tiny preset, random weights, float64: max|u| 7-69, max|du/dt| 1.8e3-4.3e4) and
    # u_tgt = v_g - h du/dt is dominated by the du/dt term. Measured on CPU float32, seed 0
    # (JAX with XLA:CPU fast compile): u_tgt 6.7e-6 and loss_per_sample 2.7e-6 (decoder
    # placement). They get du/dt's budget; u keeps 2e-6.
    tolerances={"float32": {"u_tgt": F32["du_dt"], "loss_per_sample": F32["du_dt"]}},
    tolerance_reason="u_tgt and loss_per_sample are dominated by h*du/dt (FLOWER's x1000 time frequencies "
                     "make |du/dt| ~ 1000 |u|), so they get du/dt's budget 1e-5",
    controls=(Control("flower_time_scale", "FLOWER's x1000 time-frequency scale dropped",
                      model=_drop_time_scale, module="t_embedder"),),
    dropout=_dropout,
    set_dropout=flower_set_dropout,
    bench_sizes=bench_sizes(),
)
