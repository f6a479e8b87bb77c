"""The PyTorch hooks of the training methods (`meanflow_common.train_methods`), and their type.

A `TrainMethod` names its torch hooks as "torch_meanflow.methods:IMF" etc.;
`torch_meanflow.train` calls only these fields, so the trainer has no branch on the method.
Twin of `jax_meanflow.methods` (same names, same fields).

The network comes from the task's hooks (`torch_meanflow.tasks.TaskHooks`) unless the method
trains its own family (iMF and pMF: the iMF / pMF DiT of `model_config(cfg)`, NCHW like the
digits hooks' layout, built from cfg.seed: its learned prefix tokens come from the global
RNG, so they are drawn inside `fork_rng`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Type

import torch

from meanflow_common.train_config import TrainConfig, model_config, train_method
from torch_meanflow.imf_dit import IMFDiT
from torch_meanflow.imf_objective import IMFNoise, imf_loss, sample_imf, sample_imf_noise
from torch_meanflow.objective import MeanFlowNoise, MeanFlowOutput, flow_matching_loss, meanflow_loss, sample_noise
from torch_meanflow.pmf_dit import PMFDiT
from torch_meanflow.pmf_objective import PMFNoise, pmf_loss, sample_pmf, sample_pmf_noise
from torch_meanflow.solver import generate

__all__ = ["MethodHooks", "TrainTerms", "method_hooks", "MEANFLOW", "FLOW_MATCHING", "REGRESSION", "IMF", "PMF"]


@dataclass
class TrainTerms:
    """What the train step reads of a method's loss: loss (scalar, minimised), loss_per_sample
    [B] (unweighted, what a user reads as "loss") and v_loss [B] (reported beside it)."""

    loss: torch.Tensor
    loss_per_sample: torch.Tensor
    v_loss: torch.Tensor


@dataclass(frozen=True, eq=False)
class MethodHooks:
    """What the PyTorch trainer needs of a training method.

    draw(shape, settings, generator, device, dtype) -> the randomness of one update for data
        [B, ...] in the network's layout (MeanFlowNoise, IMFNoise, PMFNoise: dataclasses of
        per-sample tensors with `.to(device, dtype)`).
    loss(task_hooks, net, data, cond, noise, settings) -> an object with loss, loss_per_sample
        and v_loss (`TrainTerms`, or the objective's own output).
    sample(task_hooks, net, e, cond, settings, num_steps, knobs) -> samples at t = 0 in the
        network's layout, before the task's finish; knobs: {name: [B] tensor} of
        `TrainMethod.sampling_fields` (checked on the host). Called under no_grad.
    noise: the class of what draw returns (its fields per sample), so that randomness drawn
        elsewhere (NumPy, for cross-backend parity) can be handed to the trainer.
    build(cfg, task_hooks, info, dtype, device) -> nn.Module, or None: the task's network.
    """

    draw: Callable
    loss: Callable
    sample: Callable
    noise: Type
    build: Optional[Callable] = None


# ----------------------------------------------------------------------------------
# MeanFlow, flow matching, regression: the task's network u(z, t, h | y)
# ----------------------------------------------------------------------------------

def _draw_meanflow(shape, mf, generator, device, dtype):
    return sample_noise(tuple(shape), mf, generator=generator, device=device, dtype=dtype)


def _mf_family_loss(objective):
    def loss(th, net, data, cond, noise, mf):
        y = th.encode(net, cond)
        return objective(th.u_fn(net), data, y, noise, mf, null_y=th.null_cond(net, mf, y), train=True)

    return loss


def _sample_meanflow(th, net, e, cond, mf, num_steps, knobs):
    return generate(th.u_fn(net), e, th.encode(net, cond), num_steps=num_steps)


def _sample_flow_matching(th, net, e, cond, mf, num_steps, knobs):
    net_u = th.u_fn(net)

    def u_fn(z, t, h, y, train=False):
        return net_u(z, t, torch.zeros_like(h), y, train)

    return generate(u_fn, e, th.encode(net, cond), num_steps=num_steps)


def _regression_loss(th, net, data, cond, noise, mf):
    """-u(0, t=1, h=1 | cond) regressed on the data (unweighted MSE)."""
    u_fn, y = th.u_fn(net), th.encode(net, cond)
    one = torch.ones(data.shape[0], dtype=data.dtype, device=data.device)
    u = u_fn(torch.zeros_like(data), one, one, y, True)
    target = -data
    per = ((u - target) ** 2).sum(dim=tuple(range(1, u.dim())))
    return MeanFlowOutput(u=u, du_dt=torch.zeros_like(u), v=target, v_g=target, u_tgt=target,
                          loss_per_sample=per, loss=per.mean(), v_loss=per.detach(), weight=torch.ones_like(per))


def _sample_regression(th, net, e, cond, mf, num_steps, knobs):
    return _sample_meanflow(th, net, torch.zeros_like(e), cond, mf, num_steps, knobs)


MEANFLOW = MethodHooks(draw=_draw_meanflow, loss=_mf_family_loss(meanflow_loss), sample=_sample_meanflow,
                       noise=MeanFlowNoise)
FLOW_MATCHING = MethodHooks(draw=_draw_meanflow, loss=_mf_family_loss(flow_matching_loss),
                            sample=_sample_flow_matching, noise=MeanFlowNoise)
REGRESSION = MethodHooks(draw=_draw_meanflow, loss=_regression_loss, sample=_sample_regression, noise=MeanFlowNoise)


# ----------------------------------------------------------------------------------
# iMF and pMF: their own DiT, net(z, t, h, omega, t_min, t_max, y) -> (u, v)
# ----------------------------------------------------------------------------------

def _builder(cls):
    def build(cfg, th, info, dtype, device):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = cls(model_config(cfg))
        return model.to(device=device, dtype=dtype)

    return build


def _guided_loss(objective):
    # net.heads: the heads before the network's own conversion (iMF's velocities, pMF's
    # x-predictions, which its loss and sampler convert with their t_clip_min)
    def loss(th, net, data, cond, noise, settings):
        out = objective(net.heads, data, th.encode(net, cond), noise, settings, null_y=net.config.num_classes)
        return TrainTerms(loss=out.loss, loss_per_sample=out.loss_u_raw.detach(), v_loss=out.loss_v_raw.detach())

    return loss


def _draw_imf(shape, settings, generator, device, dtype):
    return sample_imf_noise(tuple(shape), settings, generator=generator, device=device, dtype=dtype)


def _draw_pmf(shape, settings, generator, device, dtype):
    return sample_pmf_noise(tuple(shape), settings, generator=generator, device=device, dtype=dtype)


def _guided_sampler(sampler):
    def sample(th, net, e, cond, settings, num_steps, knobs):
        return sampler(net.heads, e, th.encode(net, cond), settings, num_steps, **knobs)

    return sample


IMF = MethodHooks(draw=_draw_imf, loss=_guided_loss(imf_loss), sample=_guided_sampler(sample_imf), noise=IMFNoise,
                  build=_builder(IMFDiT))
PMF = MethodHooks(draw=_draw_pmf, loss=_guided_loss(pmf_loss), sample=_guided_sampler(sample_pmf), noise=PMFNoise,
                  build=_builder(PMFDiT))


def method_hooks(cfg: TrainConfig) -> MethodHooks:
    """The PyTorch hooks of cfg.method (`TrainMethod.backend_hooks`)."""
    method = train_method(cfg)
    hooks = method.backend_hooks("torch")
    if not isinstance(hooks, MethodHooks):
        raise TypeError(f"method {method.name!r}: its torch hooks must be a torch_meanflow.methods.MethodHooks, "
                        f"got {type(hooks).__name__}")
    return hooks
