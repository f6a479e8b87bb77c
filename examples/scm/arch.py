"""The network sCM runs on: examples/conv_velocity's pair, called as F(x, t, y, train) -> F
through an adapter (the velocity network at h = 0), with t in [0, pi/2] going straight into
its time embedding. `ARCH` is conv_velocity's Arch with that call added; conv_velocity's own
`ARCH` lacks it, so `--objective examples.scm:SCM` on it is refused with a message naming both.
"""
from __future__ import annotations

from dataclasses import replace

from examples.conv_velocity.arch import ARCH as CONV_VELOCITY
from examples.scm.objective import F_CALL
from parity import Adapter


def _jax_F(module, params, dropout_rng=None):
    import jax.numpy as jnp

    from examples.conv_velocity.flax_net import make_u_fn

    u_fn = make_u_fn(module, params)
    return lambda x, t, y, train=False: u_fn(x, t, jnp.zeros_like(t), y, train)


def _torch_F(module):
    import torch

    from examples.conv_velocity.torch_net import make_u_fn

    u_fn = make_u_fn(module)
    return lambda x, t, y, train=False: u_fn(x, t, torch.zeros_like(t), y, train)


ARCH = replace(CONV_VELOCITY, name="conv_velocity_scm", adapters={F_CALL: Adapter(jax=_jax_F, torch=_torch_F)})
