"""The built-in iMF network pair: `jax_meanflow.imf_dit.IMFDiT` (NHWC, the official imeanflow
tree) and `torch_meanflow.imf_dit.IMFDiT` (NCHW, the official torch branch's names), called as
`net(z, t, h, omega, t_min, t_max, y) -> (u, v)` (`parity.core.imf.IMF_CALL`, the iMF
objective's call); class labels with a null class (num_classes).

Its MeanFlow call (`u_fn(z, t, h, y, train)`, what the default objective and the benchmark
use) is the u head at omega = 1 and the interval [0, 1]. The network's gates and final
layers are zero-initialised: the harness randomises every parameter (`Arch.jax_shapes`), and
trained weights move them off zero by training.
"""
from __future__ import annotations

import numpy as np

from meanflow_common.config import MeanFlowConfig
from meanflow_common.imf_config import IMF_PRESETS, IMFDiTConfig
from parity.convert.tables.imf_dit import TABLE
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Adapter, Arch, BenchSpec, ModuleMapSpec
from parity.core.imf import IMF_CALL

# the default objective's variant on this network (the u head as a MeanFlow u-network)
MEANFLOW_UNGUIDED = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5)


def make_data(cfg, batch: int, rng, **_options):
    """Latents NHWC [B, S, S, C] (N(0, 0.25)) and labels int [B] in [0, num_classes)."""
    x = 0.5 * rng.standard_normal((batch, cfg.input_size, cfg.input_size, cfg.in_channels))
    return x, rng.integers(0, cfg.num_classes, size=batch)


def jax_build(module_cls):
    def build(cfg):
        from jax_meanflow.imf_dit import init_params

        module = module_cls()(cfg)
        return module, lambda key, dtype: init_params(module, key, dtype)

    return build


def jax_shapes(module_cls):
    def shapes(cfg):
        """The Flax parameter tree as jax.ShapeDtypeStruct leaves (nothing computed)."""
        import jax
        import jax.numpy as jnp

        from jax_meanflow.imf_dit import _dummy

        module = module_cls()(cfg)
        return jax.eval_shape(lambda k: module.init(k, *_dummy(cfg, jnp.float32))["params"], jax.random.PRNGKey(0))

    return shapes


def jax_call(module, params, dropout_rng=None):
    """net(z, t, h, omega, t_min, t_max, y) -> the module's two outputs (no dropout)."""
    return lambda z, t, h, omega, t_min, t_max, y: module.apply({"params": params}, z, t, h, omega, t_min, t_max, y)


def torch_call(module):
    return lambda z, t, h, omega, t_min, t_max, y: module(z, t, h, omega, t_min, t_max, y)


def _jax_u_fn(module, params, dropout_rng=None):
    import jax.numpy as jnp

    net = jax_call(module, params)
    return lambda z, t, h, y, train=False: net(z, t, h, jnp.ones_like(t), jnp.zeros_like(t), jnp.ones_like(t), y)[0]


def _torch_u_fn(module):
    import torch

    return lambda z, t, h, y, train=False: module(z, t, h, torch.ones_like(t), torch.zeros_like(t), torch.ones_like(t),
                                                  y)[0]


def labels_jax(y, dtype):
    import jax.numpy as jnp

    return jnp.asarray(y, dtype=jnp.int32)


def labels_torch(y, dtype, device):
    import torch

    return torch.as_tensor(y, dtype=torch.long, device=device)


def _imf_cls():
    from jax_meanflow.imf_dit import IMFDiT

    return IMFDiT


def _torch_build(cfg):
    from torch_meanflow.imf_dit import IMFDiT

    return IMFDiT(cfg)


MODULE_MAP = ModuleMapSpec(block="shared_blocks.{shared_blocks}")


def bench_sizes() -> dict:
    """The benchmark's iMF sizes (the MeanFlow objective on the u head; `python -m parity bench`)."""
    mf = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.1)
    return {
        "imf-tiny": BenchSpec(IMF_PRESETS["tiny"], mf, "smoke test: 3 blocks, width 32, 16 patches"),
        "imf-small": BenchSpec(IMF_PRESETS["small"], mf, "4 blocks, width 64, 64 patches"),
        "imf-b2": BenchSpec(IMFDiTConfig(), mf, "iMF-B/2 on 32x32x4 latents: 12 blocks, width 768, 256 patches"),
    }


IMF_DIT = Arch(
    name="imf-dit",
    presets=IMF_PRESETS,
    default_preset="tiny",
    table=TABLE,
    make_data=make_data,
    jax_build=jax_build(_imf_cls),
    jax_u_fn=_jax_u_fn,
    jax_shapes=jax_shapes(_imf_cls),
    torch_build=_torch_build,
    torch_u_fn=_torch_u_fn,
    jax_y=labels_jax,
    torch_y=labels_torch,
    variants=lambda cfg: [("meanflow u head, no cfg", cfg, MEANFLOW_UNGUIDED)],
    null_label=lambda cfg: cfg.num_classes,
    layout=CHANNELS_LAST_TO_FIRST,
    module_map=MODULE_MAP,
    bench_sizes=bench_sizes(),
    adapters={IMF_CALL: Adapter(jax=jax_call, torch=torch_call)},
)
