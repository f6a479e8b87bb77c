"""The built-in pMF network pair: `jax_meanflow.pmf_dit.PMFDiT` and `torch_meanflow.pmf_dit.PMFDiT`
(pixels, NHWC / NCHW, the official pMF trees), called as the pMF objective calls it:
`net(z, t, h, omega, t_min, t_max, y) -> (x_u, x_v)`, the heads' clean-image predictions
(`parity.core.pmf.PMF_CALL`).

The official networks end by converting their predictions to velocities with clip(t, 0.05,
1); pMF's loss does that conversion itself (`x_to_velocity`, with t_clip_min, inside its
JVP), so the Arch builds the same networks with that last step left out (`_outputs` the
identity: the same parameters, the same table, the same checkpoints). Its MeanFlow call is
the u head at omega = 1, interval [0, 1], converted with the official clip. Every parameter
is randomised by the harness (zero-initialised gates and final layers).
"""
from __future__ import annotations

import functools

from meanflow_common.config import MeanFlowConfig
from meanflow_common.imf_config import PMF_PRESETS
from parity.archs.imf_dit import MEANFLOW_UNGUIDED, MODULE_MAP, jax_build, jax_call, jax_shapes, labels_jax, labels_torch
from parity.archs.imf_dit import torch_call
from parity.convert.tables.pmf_dit import TABLE
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Adapter, Arch, BenchSpec
from parity.core.pmf import PMF_CALL

OFFICIAL_CLIP = 0.05  # the official pmfDiT's clip of t in its own conversion


def make_data(cfg, batch: int, rng, **_options):
    """Images NHWC [B, S, S, C] uniform in [-1, 1] and labels int [B] in [0, num_classes)."""
    x = rng.uniform(-1.0, 1.0, (batch, cfg.input_size, cfg.input_size, cfg.in_channels))
    return x, rng.integers(0, cfg.num_classes, size=batch)


@functools.lru_cache(maxsize=None)
def _jax_cls():
    from jax_meanflow.pmf_dit import PMFDiT

    class PMFDiTX(PMFDiT):
        """PMFDiT returning the heads' x-predictions (no conversion to velocities)."""

        def _outputs(self, z, t, u, v):
            return u, v

    return PMFDiTX


@functools.lru_cache(maxsize=None)
def _torch_cls():
    from torch_meanflow.pmf_dit import PMFDiT

    class PMFDiTX(PMFDiT):
        """PMFDiT returning the heads' x-predictions (no conversion to velocities)."""

        def _outputs(self, z, t, u, v):
            return u, v

    return PMFDiTX


def _torch_build(cfg):
    return _torch_cls()(cfg)


def _velocity(z, x_u, t):
    tc = t.clip(OFFICIAL_CLIP, 1.0).reshape((-1,) + (1,) * (z.ndim - 1))
    return (z - x_u) / tc


def _jax_u_fn(module, params, dropout_rng=None):
    import jax.numpy as jnp

    net = jax_call(module, params)
    return lambda z, t, h, y, train=False: _velocity(
        z, net(z, t, h, jnp.ones_like(t), jnp.zeros_like(t), jnp.ones_like(t), y)[0], t)


def _torch_u_fn(module):
    import torch

    return lambda z, t, h, y, train=False: _velocity(
        z, module(z, t, h, torch.ones_like(t), torch.zeros_like(t), torch.ones_like(t), y)[0], t)


def bench_sizes() -> dict:
    """The benchmark's pMF sizes (the MeanFlow objective on the u head)."""
    mf = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.1)
    return {"pmf-tiny": BenchSpec(PMF_PRESETS["tiny"], mf, "smoke test: 3 blocks, width 32, 4 patches of 4x4x3"),
            "pmf-b16": BenchSpec(PMF_PRESETS["B/16"], mf, "pMF-B/16 on 256x256x3: 16 blocks, width 768, 256 patches")}


PMF_DIT = Arch(
    name="pmf-dit",
    presets=PMF_PRESETS,
    default_preset="tiny",
    table=TABLE,
    make_data=make_data,
    jax_build=jax_build(_jax_cls),
    jax_u_fn=_jax_u_fn,
    jax_shapes=jax_shapes(_jax_cls),
    torch_build=_torch_build,
    torch_u_fn=_torch_u_fn,
    jax_y=labels_jax,
    torch_y=labels_torch,
    variants=lambda cfg: [("meanflow u head, no cfg", cfg, MEANFLOW_UNGUIDED)],
    null_label=lambda cfg: cfg.num_classes,
    layout=CHANNELS_LAST_TO_FIRST,
    module_map=MODULE_MAP,
    bench_sizes=bench_sizes(),
    adapters={PMF_CALL: Adapter(jax=jax_call, torch=torch_call)},
)
