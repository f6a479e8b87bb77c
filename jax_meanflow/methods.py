"""The JAX hooks of the training methods (`meanflow_common.train_methods`), and their type.

A `TrainMethod` names its JAX hooks as "jax_meanflow.methods:IMF" etc.;
`jax_meanflow.train` calls only these fields, so the trainer has no branch on the method.
Twin of `torch_meanflow.methods` (same names, same fields).

The network comes from the task's hooks (`jax_meanflow.tasks.TaskHooks`: its build, u_fn,
encode, null_cond) unless the method trains its own family (iMF and pMF: the iMF / pMF DiT
of `model_config(cfg)`, which takes the data interface's NHWC images and the task's labels).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Type

import jax
import jax.numpy as jnp
from flax import struct

from jax_meanflow.imf_dit import IMFDiT, init_params as init_imf_params
from jax_meanflow.imf_objective import IMFNoise, imf_loss, sample_imf, sample_imf_noise
from jax_meanflow.objective import MeanFlowNoise, MeanFlowOutput, flow_matching_loss, meanflow_loss, sample_noise
from jax_meanflow.pmf_dit import PMFDiT
from jax_meanflow.pmf_objective import PMFNoise, pmf_loss, sample_pmf, sample_pmf_noise
from jax_meanflow.solver import generate
from meanflow_common.train_config import TrainConfig, model_config, train_method

__all__ = ["MethodHooks", "TrainTerms", "method_hooks", "MEANFLOW", "FLOW_MATCHING", "REGRESSION", "IMF", "PMF"]


@struct.dataclass
class TrainTerms:
    """What the train step reads of a method's loss: loss (scalar, minimised), loss_per_sample
    [B] (unweighted, what a user reads as "loss") and v_loss [B] (reported beside it)."""

    loss: jax.Array
    loss_per_sample: jax.Array
    v_loss: jax.Array


@dataclass(frozen=True, eq=False)
class MethodHooks:
    """What the JAX trainer needs of a training method.

    draw(key, shape, settings, dtype) -> the randomness of one update for data [B, ...] (a
        pytree: MeanFlowNoise, IMFNoise, PMFNoise).
    loss(task_hooks, model, params, data, cond, noise, settings, dropout_rng) -> an object
        with loss, loss_per_sample and v_loss (`TrainTerms`, or the objective's own output).
    sample(task_hooks, model, params, e, cond, settings, num_steps, knobs) -> samples at t = 0
        in the data's layout, before the task's finish; knobs: {name: [B]} of
        `TrainMethod.sampling_fields` (checked on the host).
    noise: the class of what draw returns (its fields per sample), so that randomness drawn
        elsewhere (NumPy, for cross-backend parity) can be handed to the trainer.
    build(cfg, task_hooks, info, dtype) -> (model, params), or None: the task's network.
    """

    draw: Callable
    loss: Callable
    sample: Callable
    noise: Type
    build: Optional[Callable] = None


# ----------------------------------------------------------------------------------
# MeanFlow, flow matching, regression: the task's network u(z, t, h | y)
# ----------------------------------------------------------------------------------

def _draw_meanflow(key, shape, mf, dtype):
    return sample_noise(key, shape, mf, dtype)


def _mf_family_loss(objective):
    def loss(th, model, params, data, cond, noise, mf, dropout_rng):
        y = th.encode(model, params, cond)
        return objective(th.u_fn(model, params, dropout_rng), data, y, noise, mf, null_y=th.null_cond(model, mf, y),
                         train=True)

    return loss


def _zero_h(u_fn, z, t, h, y, train=False):
    return u_fn(z, t, jnp.zeros_like(h), y, train)


def _sample_meanflow(th, model, params, e, cond, mf, num_steps, knobs):
    return generate(th.u_fn(model, params, None), e, th.encode(model, params, cond), num_steps=num_steps)


def _sample_flow_matching(th, model, params, e, cond, mf, num_steps, knobs):
    u_fn = functools.partial(_zero_h, th.u_fn(model, params, None))
    return generate(u_fn, e, th.encode(model, params, cond), num_steps=num_steps)


def _regression_loss(th, model, params, data, cond, noise, mf, dropout_rng):
    """-u(0, t=1, h=1 | cond) regressed on the data (unweighted MSE)."""
    u_fn, y = th.u_fn(model, params, dropout_rng), th.encode(model, params, cond)
    one = jnp.ones((data.shape[0],), data.dtype)
    u = u_fn(jnp.zeros_like(data), one, one, y, True)
    target = -data
    per = jnp.sum((u - target) ** 2, axis=tuple(range(1, u.ndim)))
    return MeanFlowOutput(u=u, du_dt=jnp.zeros_like(u), v=target, v_g=target, u_tgt=target,
                          loss_per_sample=per, loss=jnp.mean(per), v_loss=per, weight=jnp.ones_like(per))


def _sample_regression(th, model, params, e, cond, mf, num_steps, knobs):
    return _sample_meanflow(th, model, params, jnp.zeros_like(e), cond, mf, num_steps, knobs)


MEANFLOW = MethodHooks(draw=_draw_meanflow, loss=_mf_family_loss(meanflow_loss), sample=_sample_meanflow,
                       noise=MeanFlowNoise)
FLOW_MATCHING = MethodHooks(draw=_draw_meanflow, loss=_mf_family_loss(flow_matching_loss),
                            sample=_sample_flow_matching, noise=MeanFlowNoise)
REGRESSION = MethodHooks(draw=_draw_meanflow, loss=_regression_loss, sample=_sample_regression, noise=MeanFlowNoise)


# ----------------------------------------------------------------------------------
# iMF and pMF: their own DiT, net(z, t, h, omega, t_min, t_max, y) -> (u, v)
# ----------------------------------------------------------------------------------

def _builder(cls):
    def build(cfg, th, info, dtype):
        model = cls(model_config(cfg))
        return model, init_imf_params(model, jax.random.PRNGKey(cfg.seed), dtype)

    return build


def _net(model, params):
    # the heads before the network's own conversion: iMF's velocities, pMF's x-predictions (its
    # loss and sampler convert them with their t_clip_min; the network's output clips at 0.05)
    def net(z, t, h, omega, t_min, t_max, y):
        return model.apply({"params": params}, z, t, h, omega, t_min, t_max, y, method="heads")

    return net


def _guided_loss(objective):
    def loss(th, model, params, data, cond, noise, settings, dropout_rng):
        y = th.encode(model, params, cond)
        out = objective(_net(model, params), data, y, noise, settings, null_y=model.config.num_classes)
        return TrainTerms(loss=out.loss, loss_per_sample=out.loss_u_raw, v_loss=out.loss_v_raw)

    return loss


def _draw_imf(key, shape, settings, dtype):
    return sample_imf_noise(key, shape, settings, dtype)


def _draw_pmf(key, shape, settings, dtype):
    return sample_pmf_noise(key, shape, settings, dtype)


def _guided_sampler(sampler):
    def sample(th, model, params, e, cond, settings, num_steps, knobs):
        return sampler(_net(model, params), e, th.encode(model, params, cond), settings, num_steps, **knobs)

    return sample


IMF = MethodHooks(draw=_draw_imf, loss=_guided_loss(imf_loss), sample=_guided_sampler(sample_imf), noise=IMFNoise,
                  build=_builder(IMFDiT))
PMF = MethodHooks(draw=_draw_pmf, loss=_guided_loss(pmf_loss), sample=_guided_sampler(sample_pmf), noise=PMFNoise,
                  build=_builder(PMFDiT))


def method_hooks(cfg: TrainConfig) -> MethodHooks:
    """The JAX hooks of cfg.method (`TrainMethod.backend_hooks`)."""
    method = train_method(cfg)
    hooks = method.backend_hooks("jax")
    if not isinstance(hooks, MethodHooks):
        raise TypeError(f"method {method.name!r}: its jax hooks must be a jax_meanflow.methods.MethodHooks, "
                        f"got {type(hooks).__name__}")
    return hooks

