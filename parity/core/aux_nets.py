"""The frozen second networks of an objective (`Objective.aux`, e.g. a perceptual loss's
feature network) on both sides: the same weights (drawn once, or the user's), converted
through each network's own table, called in the convention the objective names.

The JAX weights travel as one more input of the compiled loss (not differentiated: the
gradient is taken for the trained network's weights alone); the torch modules are built
without gradient. Nothing here runs for an objective without auxiliary networks.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from parity import convert
from parity.core.sides import build_torch, jax_dtype

AUX_SEED = 4242  # the auxiliary networks' random weights: fixed, whatever the run's seed


def _model_cfg(a):
    return a.arch.preset(a.preset)


@functools.lru_cache(maxsize=8)
def aux_params(objective) -> dict:
    """{name: JAX-layout NumPy weights (float64 holding float32 values)} of the objective's
    auxiliary networks: `AuxNet.params`, or every leaf random from AUX_SEED."""
    from jax_meanflow.params import random_arrays

    out = {}
    for i, (name, a) in enumerate(objective.aux.items()):
        cfg = _model_cfg(a)
        if a.params is not None:
            tree = a.params(cfg)
        else:
            shapes = a.arch.jax_shapes(cfg) if a.arch.jax_shapes is not None else \
                a.arch.jax_build(cfg)[1](jax.random.PRNGKey(0), jnp.float32)
            tree = random_arrays(shapes, AUX_SEED + i, dtype=np.dtype(np.float32))
        out[name] = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32).astype(np.float64), tree)
    return out


def jax_aux_inputs(objective, dtype: str) -> tuple:
    """() without auxiliary networks, else ({name: weights as JAX arrays of `dtype`},): the
    extra input of the compiled loss."""
    if not objective.aux:
        return ()
    jdt = jax_dtype(dtype)
    return ({k: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jdt), p) for k, p in aux_params(objective).items()},)


def jax_aux_nets(objective, weights: dict) -> dict:
    """{name: the JAX callable} of each auxiliary network on `weights` (jax_aux_inputs')."""
    out = {}
    for name, a in objective.aux.items():
        module, _ = a.arch.jax_build(_model_cfg(a))
        out[name] = a.arch.jax_net(a.convention, module, jax.lax.stop_gradient(weights[name]))
    return out


def torch_aux_nets(objective, dtype: str, device: str = "cpu") -> dict:
    """{name: the torch callable} of each auxiliary network: its module in `dtype` on `device`,
    eval mode, the converted weights without gradient."""
    out = {}
    for name, a in objective.aux.items():
        cfg = _model_cfg(a)
        state = convert.jax_to_torch(aux_params(objective)[name], a.arch.table, cfg)
        module = build_torch(a.arch, cfg, state, dtype, device).requires_grad_(False)
        out[name] = a.arch.torch_net(a.convention, module)
    return out
