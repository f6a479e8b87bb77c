"""The PyTorch hooks of the built-in training tasks (`meanflow_common.tasks`), and their type.

A `meanflow_common.tasks.Task` names its torch hooks as "torch_meanflow.tasks:DIGITS" etc.;
`torch_meanflow.train` imports them through `Task.backend_hooks("torch")` and calls only
these fields, so the trainer has no branch on the task. Twin of `jax_meanflow.tasks`
(same names, same fields; here the network's layout may differ from the data
interface's, as the DiT's NCHW does from the NHWC images, and the hooks convert).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from meanflow_common.train_config import TrainConfig, model_config, objective_config
from torch_meanflow.dit import init_dit
from torch_meanflow.policy import FlowerPolicy

__all__ = ["TaskHooks", "DIGITS", "REACH"]


def _identity_cond(net, cond):
    return cond


def _no_null(net, mf, y):
    return None


def _unchanged(net, x):
    return x


def _same_layout(a: np.ndarray) -> np.ndarray:
    return a


def _same_shape(shape: tuple) -> tuple:
    return tuple(shape)


def _float_tensor(cond, device, dtype):
    return torch.as_tensor(np.asarray(cond)).to(device, dtype)


@dataclass(frozen=True, eq=False)
class TaskHooks:
    """What the PyTorch trainer needs of a task's network.

    build(cfg, info, dtype, device) -> nn.Module: the network of `model_config(cfg)`
        initialised from cfg.seed (the global RNG left as it was) in `dtype` on `device`
        (info: `Task.model_info`, e.g. obs_dim).
    u_fn(net) -> u_fn(z, t, h, y, train) -> u, z and u in the network's layout, t and h [B].
    encode(net, cond) -> y: the network's conditioning from the batch's cond tensor.
    cond_tensor(cond, device, dtype) -> tensor of the NumPy cond (dtype: the master dtype).
    null_cond(net, mf, y) -> the null conditioning of CFG and class dropout, or None.
    finish(net, x) -> the samples as returned, still in the network's layout (e.g. clamped).
    to_layout(a) / from_layout(a): NumPy data [B, ...] from the data interface's layout to
        the network's and back (digits: NHWC <-> NCHW); layout_shape(shape) the same for a
        shape (the noise is drawn in the network's layout).
    """

    build: Callable[[TrainConfig, Mapping[str, Any], Any, Any], torch.nn.Module]
    u_fn: Callable
    encode: Callable = _identity_cond
    cond_tensor: Callable = _float_tensor
    null_cond: Callable = _no_null
    finish: Callable = _unchanged
    to_layout: Callable[[np.ndarray], np.ndarray] = _same_layout
    from_layout: Callable[[np.ndarray], np.ndarray] = _same_layout
    layout_shape: Callable[[tuple], tuple] = _same_shape


# ----------------------------------------------------------------------------------
# digits: the DiT on NCHW images (the data interface's NHWC transposed), integer labels
# ----------------------------------------------------------------------------------

def _build_dit(cfg, info, dtype, device):
    return init_dit(model_config(cfg), seed=cfg.seed, dtype=dtype, device=device)


def _dit_u_fn(net):
    def u_fn(z, t, h, y, train=False):
        return net(z, t, h, y, train=train)

    return u_fn


def _labels(cond, device, dtype):
    return torch.as_tensor(np.asarray(cond), dtype=torch.long, device=device)


def _null_label(net, mf, y):
    if not (bool(mf.guidance_eq) or mf.class_dropout_prob > 0):
        return None
    return torch.full_like(y, net.config.num_classes)


def _nhwc_to_nchw(a):
    return a.transpose(0, 3, 1, 2)


def _nchw_to_nhwc(a):
    return a.transpose(0, 2, 3, 1)


def _nchw_shape(shape):
    return (shape[0], shape[3], shape[1], shape[2])


DIGITS = TaskHooks(build=_build_dit, u_fn=_dit_u_fn, cond_tensor=_labels, null_cond=_null_label,
                   to_layout=_nhwc_to_nchw, from_layout=_nchw_to_nhwc, layout_shape=_nchw_shape)


# ----------------------------------------------------------------------------------
# reach: the FLOWER policy on observations -> action chunks [B, T, A]
# ----------------------------------------------------------------------------------

def _build_policy(cfg, info, dtype, device):
    if "obs_dim" not in info:
        raise ValueError("the reach policy needs obs_dim or an example batch with 'obs'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = FlowerPolicy(model_config(cfg), obs_dim=int(info["obs_dim"]), mf_cfg=objective_config(cfg),
                              clip_actions=cfg.clip_actions, num_tokens=cfg.obs_tokens)
    return policy.to(device=device, dtype=dtype)


def _policy_u_fn(policy):
    return policy.u_fn


def _encode_obs(policy, obs):
    return policy.encode(obs)


def _clip(policy, x):
    return x.clamp(-1.0, 1.0) if policy.clip_actions else x


REACH = TaskHooks(build=_build_policy, u_fn=_policy_u_fn, encode=_encode_obs, finish=_clip)
