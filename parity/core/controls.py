"""Negative controls: known porting bugs, injected into the PyTorch side on purpose.

Each `Control` reproduces one bug that a port of MeanFlow can plausibly contain. The
harness run with the control active must FAIL (tests/test_parity_controls.py proves it
for each); the same run without it passes. A harness that cannot see these bugs proves
nothing.

A control acts at one of three places:
- `objective`: a context manager patching `torch_meanflow.objective` (how du/dt or the
  target is formed);
- `model`: a function applied to the torch module after the weights are loaded;
- `state`: a function applied to the converted torch state dict (a conversion bug).
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import numpy as np
import torch

import torch_meanflow.objective as tobj


@dataclass(frozen=True)
class Control:
    name: str
    arch: str
    description: str
    objective: Optional[Callable[[], ContextManager]] = None
    model: Optional[Callable[[torch.nn.Module], None]] = None
    state: Optional[Callable[[dict], dict]] = None
    # Which module the divergence debugger must blame (issue 5); "" = the objective.
    module: str = ""


@contextlib.contextmanager
def _patched(name: str, replacement):
    original = getattr(tobj, name)
    setattr(tobj, name, replacement(original))
    try:
        yield
    finally:
        setattr(tobj, name, original)


# ----------------------------------------------------------------------------------
# Objective bugs
# ----------------------------------------------------------------------------------


def _zero_z_tangent(original):
    """The seed guide's second JVP: tangents (0, 1, 0), the partial derivative in t."""

    def u_and_du_dt(fn, z_t, t, r, tangent, jvp_path):
        return original(fn, z_t, t, r, torch.zeros_like(tangent), jvp_path)

    return u_and_du_dt


def _autograd_wrt_t(original):
    """Backward-mode grad of sum(u) w.r.t. t: one number per sample, partial and summed."""

    def u_and_du_dt(fn, z_t, t, r, tangent, jvp_path):
        t_req = t.detach().requires_grad_(True)
        u = fn(z_t, t_req, r)
        (g,) = torch.autograd.grad(u.sum(), t_req, retain_graph=True)
        return u, g.view(-1, *([1] * (u.dim() - 1))).expand_as(u)

    return u_and_du_dt


def _no_stop_gradient(original):
    """The target keeps its graph: gradients flow through v_g - h du/dt as well."""

    def finish(u, du_dt, v, v_g, t, r, cfg):
        out = original(u, du_dt, v, v_g, t, r, cfg)
        h = (t - r).clamp(0.0, 1.0).view(-1, *([1] * (u.dim() - 1)))
        u_tgt = v_g - h * du_dt  # du_dt still attached to the JVP graph
        dims = tuple(range(1, u.dim()))
        lps = ((u - u_tgt) ** 2).sum(dim=dims)
        return dataclasses.replace(out, loss_per_sample=lps, loss=(lps / out.weight).mean())

    return finish


@contextlib.contextmanager
def _no_stop_gradient_port():
    """A straightforward port: du/dt from torch.func.jvp (whose tangent carries the autograd
    graph) and a target without stop-gradient. Our default JVP engine computes the tangent
    without a graph, which alone would hide the missing detach."""
    with tobj.jvp_engine("torch.func"), _patched("_finish", _no_stop_gradient):
        yield


def _no_clip(original):
    def finish(u, du_dt, v, v_g, t, r, cfg):
        return original(u, du_dt, v, v_g, t, r, dataclasses.replace(cfg, clip_h=False))

    return finish


# ----------------------------------------------------------------------------------
# Model and conversion bugs
# ----------------------------------------------------------------------------------


def _gelu_erf(module):
    for m in module.modules():
        if isinstance(m, torch.nn.GELU):
            m.approximate = "none"


def _layernorm_eps(module):
    for m in module.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = 1e-5


def _untransposed_conv(state: dict) -> dict:
    """The Flax HWIO kernel reshaped to OIHW instead of transposed."""
    key = "x_embedder.proj.weight"
    w = np.asarray(state[key])
    hwio = w.transpose(2, 3, 1, 0)
    return {**state, key: np.ascontiguousarray(hwio.reshape(w.shape))}


def _drop_flower_time_scale(module):
    """FLOWER multiplies the time frequencies by 1000; a port that forgets it."""
    module.t_embedder.set_table("freqs", module.t_embedder.table("freqs") / 1000.0)


CONTROLS: dict[str, Control] = {
    c.name: c
    for c in (
        Control("zero_z_tangent", "dit", "du/dt from a JVP with zero z-tangent (guide, section 5)",
                objective=lambda: _patched("_u_and_du_dt", _zero_z_tangent)),
        Control("autograd_wrt_t", "dit", "du/dt by torch.autograd.grad w.r.t. t",
                objective=lambda: _patched("_u_and_du_dt", _autograd_wrt_t)),
        Control("no_stop_gradient", "dit", "no stop-gradient on the target",
                objective=lambda: _no_stop_gradient_port()),
        Control("gelu_erf", "dit", "GELU erf instead of tanh in the DiT MLP",
                model=_gelu_erf, module="blocks.0.mlp"),
        Control("layernorm_eps", "dit", "LayerNorm eps 1e-5 instead of 1e-6",
                model=_layernorm_eps, module="blocks.0.norm1"),
        Control("untransposed_conv", "dit", "patch-embedding conv kernel reshaped, not transposed",
                state=_untransposed_conv, module="x_embedder"),
        Control("flower_time_scale", "flower", "FLOWER's x1000 time-frequency scale dropped",
                model=_drop_flower_time_scale, module="t_embedder"),
    )
}

# Not a control: for every valid input 0 <= r <= t <= 1, t - r already lies in [0, 1], so
# dropping the clip changes nothing (tests/test_parity_controls.py measures exactly 0).
NO_OP_PORTING_CHANGES: dict[str, Control] = {
    "no_clip": Control("no_clip", "dit", "no clip of (t - r) in the target",
                       objective=lambda: _patched("_finish", _no_clip)),
}


def get_control(name: str) -> Control:
    table = {**CONTROLS, **NO_OP_PORTING_CHANGES}
    if name not in table:
        raise KeyError(f"unknown control {name!r}; available: {', '.join(sorted(table))}")
    return table[name]
