"""The JAX hooks of the built-in training tasks (`meanflow_common.tasks`), and their type.

A `meanflow_common.tasks.Task` names its JAX hooks as "jax_meanflow.tasks:DIGITS" etc.;
`jax_meanflow.train` imports them through `Task.backend_hooks("jax")` and calls only
these fields, so the trainer has no branch on the task. Twin of `torch_meanflow.tasks`
(same names, same fields, each in its framework's layout).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jax_meanflow import dit
from jax_meanflow.policy import FlowerPolicy
from meanflow_common.train_config import TrainConfig, model_config, objective_config

__all__ = ["TaskHooks", "KeyedModel", "DIGITS", "REACH"]


def _identity_cond(model, params, cond):
    return cond


def _no_null(model, mf, y):
    return None


def _unchanged(model, x):
    return x


def _float_array(cond, dtype):
    return jnp.asarray(cond, dtype)


def _by_value(model):
    return model


@dataclass(frozen=True, eq=False)
class TaskHooks:
    """What the JAX trainer needs of a task's network.

    build(cfg, info, dtype) -> (model, params): the network of `model_config(cfg)` and its
        initial parameters from cfg.seed in `dtype` (info: `Task.model_info`, e.g. obs_dim).
    u_fn(model, params, dropout_rng) -> u_fn(z, t, h, y, train) -> u, z and u [B, *data
        shape] in the data interface's layout, t and h [B].
    encode(model, params, cond) -> y: the network's conditioning from the batch's cond
        array (labels as they are; observations to tokens).
    cond_array(cond, dtype) -> jnp array of the NumPy cond (dtype: the master dtype).
    null_cond(model, mf, y) -> the null conditioning of CFG and class dropout, or None.
    finish(model, x) -> the samples as returned (e.g. actions clamped to [-1, 1]).
    model_key(model) -> hashable: the model's identity for the compile caches (equal keys:
        the same network; the loss and sampler compile once per key).
    dropout: the loss takes a dropout key (batch["dropout_rng"], drawn per update).
    """

    build: Callable[[TrainConfig, Mapping[str, Any], Any], tuple]
    u_fn: Callable
    encode: Callable = _identity_cond
    cond_array: Callable = _float_array
    null_cond: Callable = _no_null
    finish: Callable = _unchanged
    model_key: Callable = _by_value
    dropout: bool = False


class KeyedModel:
    """A model in a compile cache key: equal and hashed by its hooks' model_key, so a rebuilt
    but identical network (a second run, a loaded run) reuses the compiled step."""

    def __init__(self, hooks: TaskHooks, model):
        self.model, self.key = model, hooks.model_key(model)

    def __eq__(self, other):
        return isinstance(other, KeyedModel) and self.key == other.key

    def __hash__(self):
        return hash(self.key)


# ----------------------------------------------------------------------------------
# digits: the DiT on NHWC images, integer labels with a null class
# ----------------------------------------------------------------------------------

def _build_dit(cfg, info, dtype):
    mc = model_config(cfg)
    return dit.DiT(mc), dit.init_dit(mc, jax.random.PRNGKey(cfg.seed), dtype)


def _dit_u_fn(model, params, dropout_rng=None):
    return dit.make_u_fn(model, params)  # the DiT has no dropout


def _labels(cond, dtype):
    return jnp.asarray(np.asarray(cond).astype(np.int32))


def _null_label(model, mf, y):
    if not (bool(mf.guidance_eq) or mf.class_dropout_prob > 0):
        return None
    return jnp.full(y.shape[:1], model.config.num_classes, y.dtype)


DIGITS = TaskHooks(build=_build_dit, u_fn=_dit_u_fn, cond_array=_labels, null_cond=_null_label)


# ----------------------------------------------------------------------------------
# reach: the FLOWER policy on observations -> action chunks [B, T, A]
# ----------------------------------------------------------------------------------

def _build_policy(cfg, info, dtype):
    if "obs_dim" not in info:
        raise ValueError("the reach policy needs obs_dim or an example batch with 'obs'")
    policy = FlowerPolicy(model_config(cfg), int(info["obs_dim"]), objective_config(cfg), cfg.clip_actions,
                          cfg.obs_tokens)
    return policy, policy.init(cfg.seed, dtype)


def _policy_u_fn(policy, params, dropout_rng=None):
    return policy.u_fn(params, dropout_rng)


def _encode_obs(policy, params, obs):
    return policy.encode(params, obs)


def _clip(policy, x):
    return jnp.clip(x, -1.0, 1.0) if policy.clip_actions else x


def _policy_key(policy):
    return (policy.config, policy.obs_dim, policy.num_tokens, policy.clip_actions)


REACH = TaskHooks(build=_build_policy, u_fn=_policy_u_fn, encode=_encode_obs, finish=_clip, model_key=_policy_key,
                  dropout=True)
