"""Training state and step: AdamW (optax) + EMA of the parameters, as in the JAX reference.

The loss enters as `loss_fn(params, batch, noise) -> (loss, MeanFlowOutput)`; the
step is a pure function of (state, batch, noise) and is jitted with loss_fn static.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from meanflow_common.config import OptimConfig

__all__ = ["TrainState", "make_lr_schedule", "make_optimizer", "create_train_state", "train_step", "make_train_step"]


@struct.dataclass
class TrainState:
    """step: int32 scalar (updates done); params, ema_params: pytrees; opt_state: optax state."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def make_lr_schedule(optim_cfg: OptimConfig) -> Callable:
    """lr(step) = lr * min(1, step / warmup_steps) (constant lr without warm-up).

    `step` counts updates already done, so with warm-up the first update uses lr 0.
    """
    if optim_cfg.warmup_steps <= 0:
        return optax.constant_schedule(optim_cfg.lr)
    warm = optax.linear_schedule(0.0, optim_cfg.lr, optim_cfg.warmup_steps)
    return optax.join_schedules([warm, optax.constant_schedule(optim_cfg.lr)], [optim_cfg.warmup_steps])


def make_optimizer(optim_cfg: OptimConfig) -> optax.GradientTransformation:
    """AdamW(lr schedule, b1, b2, eps, weight_decay), after a global-norm clip if grad_clip > 0."""
    adamw = optax.adamw(
        learning_rate=make_lr_schedule(optim_cfg),
        b1=optim_cfg.b1,
        b2=optim_cfg.b2,
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    if optim_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip), adamw)
    return adamw


def create_train_state(params, optim_cfg: OptimConfig) -> TrainState:
    """Step 0, optimizer state initialised on params, EMA starting at params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.asarray, params),
        opt_state=make_optimizer(optim_cfg).init(params),
    )


@partial(jax.jit, static_argnames=("loss_fn", "optim_cfg"))
def train_step(state: TrainState, loss_fn: Callable, batch, noise, optim_cfg: OptimConfig):
    """One AdamW update and one EMA update. Returns (new_state, metrics).

    loss_fn(params, batch, noise) -> (loss, MeanFlowOutput); loss_fn and optim_cfg are
    static (hashable). metrics: loss (the batch mean of the unweighted per-sample
    loss_per_sample, what a user reads), v_loss (batch mean), weighted_loss (the adaptive-
    weighted loss the update minimises), grad_norm (before clipping), lr (used for this
    update). ema = ema_decay * ema + (1 - ema_decay) * new_params.
    """
    (loss, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, noise)
    tx = make_optimizer(optim_cfg)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = optim_cfg.ema_decay
    # EMA of the updated parameters, in each leaf's own dtype (float64 stays float64).
    ema = jax.tree.map(lambda e, p: (d * e + (1 - d) * p).astype(p.dtype), state.ema_params, params)
    metrics = {
        "loss": jnp.mean(out.loss_per_sample),
        "v_loss": jnp.mean(out.v_loss),
        "weighted_loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "lr": jnp.asarray(make_lr_schedule(optim_cfg)(state.step)),
    }
    new_state = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    return new_state, metrics


def make_train_step(loss_fn: Callable, optim_cfg: OptimConfig) -> Callable:
    """A jitted `step(state, batch, noise) -> (new_state, metrics)` with loss_fn bound."""

    def step(state: TrainState, batch, noise):
        return train_step(state, loss_fn, batch, noise, optim_cfg)

    return step
