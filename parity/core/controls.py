"""Negative controls: known porting bugs, injected into the PyTorch side on purpose.

Each `Control` reproduces one bug that a port can plausibly contain. The harness run with
the control active must FAIL (tests/test_parity_controls.py proves it for each); the same
run without it passes. A harness that cannot see these bugs proves nothing.

A control acts at one of three places:
- `objective`: a context manager patching the torch implementation of an objective (for
  MeanFlow, `torch_meanflow.objective`: how du/dt or the target is formed), optionally with
  the JVP engine it needs (`engine`);
- `model`: a function applied to the torch module after the weights are loaded;
- `state`: a function applied to the converted torch state dict (a conversion bug).
The MeanFlow controls below fit every network and belong to the MeanFlow objective
(`Objective.controls`, `for_objective`); controls of the other two kinds name a network's
modules and live with its `Arch` (`Arch.controls`). Importing this module loads no framework.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional


@dataclass(frozen=True)
class Control:
    """One injected bug. module: the torch module the divergence debugger must blame
    ("" = the objective); engine: the torch JVP engine the bug needs (None: the run's);
    owner: the name of the network whose modules or weights a `model`/`state` bug names
    (refused on another network; "" for a control that fits any); for_objective: the name of
    the objective whose torch implementation an `objective` bug patches (set by the
    `Objective` that lists it; refused under another objective)."""

    name: str
    description: str
    objective: Optional[Callable[[], ContextManager]] = None
    model: Optional[Callable[[torch.nn.Module], None]] = None
    state: Optional[Callable[[dict], dict]] = None
    module: str = ""
    engine: Optional[str] = None
    owner: str = ""
    for_objective: str = ""


@contextlib.contextmanager
def _patched(name: str, replacement):
    import torch_meanflow.objective as tobj

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

    def u_and_du_dt(fn, z_t, t, r, tangent, jvp_path, options):
        import torch

        return original(fn, z_t, t, r, torch.zeros_like(tangent), jvp_path, options)

    return u_and_du_dt


def _autograd_wrt_t(original):
    """Backward-mode grad of sum(u) w.r.t. t: one number per sample, partial and summed."""

    def u_and_du_dt(fn, z_t, t, r, tangent, jvp_path, options):
        import torch

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



def _no_clip(original):
    def finish(u, du_dt, v, v_g, t, r, cfg):
        return original(u, du_dt, v, v_g, t, r, dataclasses.replace(cfg, clip_h=False))

    return finish


def _window_ignored(original):
    """omega' = omega and kappa' = kappa for every t: the guidance interval dropped."""

    def guidance(u_fn, v, z_t, t, y, cfg, null_y):
        return original(u_fn, v, z_t, t, y, dataclasses.replace(cfg, t_start=0.0, t_end=1.0), null_y)

    return guidance


# A straightforward port of the missing stop-gradient: du/dt from torch.func.jvp (whose
# tangent carries the autograd graph; the control sets that engine) and a target without
# stop-gradient. Our default JVP engine computes the tangent without a graph, which alone
# would hide the missing detach. The guidance-window bug shows only on a variant whose
# interval [t_start, t_end] leaves some t out.
OBJECTIVE_CONTROLS: tuple[Control, ...] = (
    Control("zero_z_tangent", "du/dt from a JVP with zero z-tangent (guide, section 5)",
            objective=lambda: _patched("_u_and_du_dt", _zero_z_tangent)),
    Control("autograd_wrt_t", "du/dt by torch.autograd.grad w.r.t. t",
            objective=lambda: _patched("_u_and_du_dt", _autograd_wrt_t)),
    Control("no_stop_gradient", "no stop-gradient on the target",
            objective=lambda: _patched("_finish", _no_stop_gradient), engine="torch.func"),
    Control("guidance_window_ignored", "guidance applied outside [t_start, t_end] too",
            objective=lambda: _patched("guidance_velocity", _window_ignored)),
)

# Not a control: for every valid input 0 <= r <= t <= 1, t - r already lies in [0, 1], so
# dropping the clip changes nothing (tests/test_parity_controls.py measures exactly 0).
NO_OP_PORTING_CHANGES: dict[str, Control] = {
    "no_clip": Control("no_clip", "no clip of (t - r) in the target", objective=lambda: _patched("_finish", _no_clip)),
}


def get_control(name: str, arch, objective) -> Control:
    """Control `name` of `arch` (its `controls`) or of `objective` (its controls and no-op
    changes, which fit any network)."""
    table = {c.name: c for c in objective.controls}
    table.update(objective.no_op_changes)
    table.update({c.name: c for c in arch.controls})
    if name not in table:
        raise KeyError(f"unknown control {name!r} for {arch.name} under objective {objective.name}; "
                       f"available: {', '.join(sorted(table))}")
    return table[name]


def check_control(control: Control | None, arch, objective=None) -> None:
    """A control that changes the model or its weights and was written for another network
    (its `owner` names it) is refused on `arch`; one that patches another objective's torch
    implementation (its `for_objective`) is refused under `objective`; ad-hoc controls (no
    owner) are the caller's."""
    if control is None:
        return
    if objective is not None and control.objective is not None and control.for_objective \
            and control.for_objective != objective.name:
        raise ValueError(f"control {control.name!r} patches the torch implementation of objective "
                         f"{control.for_objective}, not of {objective.name} (whose controls are: "
                         f"{', '.join(c.name for c in objective.controls) or 'none'})")
    if control.model is None and control.state is None:
        return
    if any(c is control for c in arch.controls):
        return
    if control.owner and control.owner != arch.name:
        raise ValueError(f"control {control.name!r} changes {control.owner}'s modules or weights and is not one of "
                         f"{arch.name}'s controls ({', '.join(c.name for c in arch.controls) or 'none'})")
