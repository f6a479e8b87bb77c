"""Optimiser, EMA and one training step in PyTorch, twin of `jax_meanflow.train_state`.

AdamW (lr, betas (b1, b2), eps, weight decay from `OptimConfig`), an optional linear
warm-up, an optional global-norm gradient clip, and an EMA copy of the model updated after
every step: ema = d * ema + (1 - d) * param, in the parameters' own dtype.

The loss is given as `loss_fn(model, batch, noise) -> MeanFlowOutput` (anything with
`.loss` [scalar] and `.v_loss` [B]); `make_train_step` can run it under `torch.compile`.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from meanflow_common.config import OptimConfig

__all__ = ["make_lr_schedule", "make_optimizer", "TrainState", "create_train_state", "train_step", "make_train_step",
           "compile_loss"]

LossFn = Callable[[torch.nn.Module, Any, Any], Any]


def _warmup_factor(warmup_steps: int) -> Callable[[int], float]:
    # lr(step) = lr * min(1, step / warmup_steps), step = updates already done, as the JAX
    # twin's optax.linear_schedule: with warm-up the first update uses lr 0.
    if warmup_steps <= 0:
        return lambda step: 1.0
    return lambda step: min(1.0, step / warmup_steps)


def make_lr_schedule(optim_cfg: OptimConfig) -> Callable[[int], float]:
    """lr(step) = lr * min(1, step / warmup_steps) (constant lr without warm-up); `step`
    counts the updates already done."""
    factor = _warmup_factor(optim_cfg.warmup_steps)
    return lambda step: optim_cfg.lr * factor(step)


_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fusable(params: list) -> bool:
    return bool(params) and all(
        isinstance(p, torch.Tensor) and p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES
        for p in params
    )


def make_optimizer(params, optim_cfg: OptimConfig):
    """AdamW over `params` and its warm-up scheduler. Returns (optimizer, scheduler).

    The scheduler gives `make_lr_schedule(optim_cfg)(step)` for the update after `step`
    updates. Tensors on CPU or CUDA use PyTorch's fused AdamW kernel: one pass over all
    parameters instead of a Python loop of small ops (3.5x faster on CPU for a 69M-parameter
    FLOWER, 186 -> 53 ms; the results agree with the loop to ~1 ulp).
    """
    params = list(params)
    optimizer = torch.optim.AdamW(
        params,
        lr=optim_cfg.lr,
        betas=(optim_cfg.b1, optim_cfg.b2),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
        fused=True if _fusable(params) else None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_factor(optim_cfg.warmup_steps))
    return optimizer, scheduler


@dataclass
class TrainState:
    """The model being trained, its EMA copy (no gradients, eval mode), AdamW, the
    warm-up scheduler and the number of steps taken."""

    model: torch.nn.Module
    ema_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0


def create_train_state(model: torch.nn.Module, optim_cfg: OptimConfig) -> TrainState:
    """Wrap `model` with a deep-copied EMA and a fresh optimiser."""
    ema_model = copy.deepcopy(model).eval()
    ema_model.requires_grad_(False)
    optimizer, scheduler = make_optimizer(model.parameters(), optim_cfg)
    return TrainState(model=model, ema_model=ema_model, optimizer=optimizer, scheduler=scheduler)


def _clip_global_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global L2 norm of `grads` (before clipping); scales them in place when above max_norm
    (max_norm 0 = no clip). Tensor ops only, so no host sync."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm > 0:
        coef = torch.clamp(max_norm / norm, max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].dtype))
    return norm


@torch.no_grad()
def _update_ema(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema, params = list(ema_model.parameters()), list(model.parameters())
    if ema:  # the same two ops per tensor as a loop of mul_/add_, batched
        torch._foreach_mul_(ema, decay)
        torch._foreach_add_(ema, params, alpha=1.0 - decay)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def train_step(state: TrainState, loss_fn: LossFn, batch, noise, optim_cfg: OptimConfig,
               grad_sync: Optional[Callable[[list], None]] = None) -> dict:
    """One optimiser step on `loss_fn(state.model, batch, noise).loss`, then the EMA update.

    grad_sync(parameters), when given, runs between backward and the clip: data-parallel
    training all-reduces the gradients there (`torch_meanflow.parallel.sync_gradients`).

    Returns {"loss": scalar tensor, "v_loss": scalar tensor (batch mean), "grad_norm": scalar
    tensor (before clipping), "lr": float (the rate this step used)}; tensors are detached.
    """
    model = state.model
    model.train()
    state.optimizer.zero_grad(set_to_none=True)
    out = loss_fn(model, batch, noise)
    out.loss.backward()
    if grad_sync is not None:
        grad_sync(list(model.parameters()))
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        raise RuntimeError("the loss produced no gradient for any parameter of the model")
    grad_norm = _clip_global_norm(grads, optim_cfg.grad_clip)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    _update_ema(state.ema_model, model, optim_cfg.ema_decay)
    state.step += 1
    return {
        "loss": out.loss.detach(),
        "v_loss": out.v_loss.detach().mean(),
        "grad_norm": grad_norm.detach(),
        "lr": float(lr),
    }


def make_train_step(loss_fn: LossFn, optim_cfg: OptimConfig, compile: bool = False):
    """A function step(state, batch, noise) -> metrics running `train_step`.

    compile=True runs loss_fn under `torch.compile` (forward and JVP traced by Dynamo, the
    backward by AOTAutograd). If compilation fails, a warning quoting the error is issued
    once and the step falls back to eager mode. ValueError/TypeError (the loss's own input
    checks) are raised as they are.
    """
    fn = compile_loss(loss_fn) if compile else loss_fn

    def step(state: TrainState, batch, noise) -> dict:
        return train_step(state, fn, batch, noise, optim_cfg)

    return step


def compile_loss(loss_fn: LossFn) -> LossFn:
    """`loss_fn` under torch.compile (the MeanFlow JVP through torch.func.jvp, traced whole);
    on a compiler failure, a warning quoting the error and eager mode from then on."""
    compiled = torch.compile(loss_fn)
    use_eager = [False]

    def fn(model, batch, noise):
        if not use_eager[0]:
            try:
                return compiled(model, batch, noise)
            except (ValueError, TypeError):
                raise  # bad input, reported by the loss's own checks: not a compiler failure
            except Exception as err:  # noqa: BLE001 - any compiler failure triggers the fallback
                use_eager[0] = True
                warnings.warn(
                    f"torch.compile of the loss failed ({type(err).__name__}: {err}); "
                    "falling back to eager mode",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return loss_fn(model, batch, noise)

    return fn

