"""The divergence debugger: where and why the two backends part.

`run_debug` evaluates one variant on both sides from the same float64 input bundle as the
harness, then:
1. captures every module's output and input, primal and JVP tangent, for the network call
   inside the objective's JVP (`Objective.jvp_point`; MeanFlow: primals (z_t, t, r),
   tangents (v_g, 1, 0); both sides get the reference's v_g and the dropped labels, so the
   network is compared on identical inputs);
2. compares them module by module in execution order (torch hook order): max abs error and
   max error relative to the JAX max magnitude, primal against the tolerance of the JVP's
   primal term and tangent against that of its tangent term (`Objective.jvp_terms`; MeanFlow:
   u and du/dt) in the dtype (parity/core/tolerances.py);
3. blames a module: the first module over tolerance if its inputs agree (the bug is in its
   own computation), else its nearest compared ancestor (its input was computed wrongly by
   the ancestor's code between sub-modules, since every earlier module agrees);
4. when the network agrees everywhere, compares the objective terms (MeanFlow: u, v_g, du/dt,
   u_tgt, losses, gradients) and names the objective as the place of the divergence, with the
   first failing term and what that pattern means (`Objective.hints`).

Precision matrix and compare modes live in parity/debug/modes.py; tables, the PNG and the
JSON and the command line (`python -m parity debug`) in parity/debug/report.py.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from parity.core.arch import Variant
from parity.core.compare import CheckResult, error_stats
from parity.core.harness import objective_checks, run_sides
from parity.core.meanflow import MEANFLOW
from parity.core.rule import DEFAULT_RULE
from parity.core.sides import build_torch
from parity.core.tolerances import tolerance
from parity.debug.capture import (
    DEFAULT_ATTENTION,
    DEFAULT_ENGINE,
    Capture,
    NetInputs,
    jax_capture,
    module_map,
    net_inputs,
    torch_capture,
    torch_only_modules,
)
from torch_meanflow.objective import JvpOptions

__all__ = [
    "ModuleDiff", "DebugResult", "DebugCase", "prepare_case", "analyse", "run_debug", "compare_captures", "blame",
    "diagnose_objective", "objective_checks", "depth_growth", "names_line_up", "blames", "OBJECTIVE", "NETWORK",
]

OBJECTIVE = "objective"

# MeanFlow's hints, as the objective declares them (Objective.hints).
_OBJECTIVE_HINTS = MEANFLOW.hints


@dataclass
class ModuleDiff:
    """One module call: errors of its output (and of its inputs), primal and tangent."""

    index: int
    name: str
    jax_path: str
    shape: tuple
    primal_abs: float
    primal_rel: float
    tangent_abs: float
    tangent_rel: float
    input_primal_rel: float
    input_tangent_rel: float
    primal_over: bool
    tangent_over: bool
    inputs_over: bool  # an input (primal or tangent) already differs beyond tolerance
    where: str = ""
    n_arrays: int = 1  # outputs that are tuples (e.g. FLOWER's 9 adaLN signals): shape is the first's

    @property
    def over(self) -> bool:
        return self.primal_over or self.tangent_over


@dataclass
class DebugResult:
    arch: str
    variant: str
    dtype: str
    device: str
    control: str | None
    tol_primal: float
    tol_tangent: float
    modules: list
    blamed: str  # "" when clean, "objective", "<network>" (the root) or a torch module name
    reason: str
    first_over: str | None
    objective: list
    diagnosis: str
    blocks: list  # [(name, primal_rel, tangent_rel)] for the repeated blocks, then the output
    growth: dict
    torch_only: list
    jax_only_names: list = field(default_factory=list)
    engine: str = DEFAULT_ENGINE  # the torch objective's JVP engine (JvpOptions.engine)
    attention: str = DEFAULT_ATTENTION  # the attention under a tangent (JvpOptions.attention)
    extras: dict = field(default_factory=dict)  # precision matrix, compare modes, png path

    @property
    def clean(self) -> bool:
        return not self.blamed

    def as_dict(self) -> dict:
        out = asdict(self)
        out["modules"] = [dict(asdict(m), over=m.over) for m in self.modules]
        out["objective"] = [r.as_dict() for r in self.objective]
        out["clean"] = self.clean
        return out


def _leaves_error(ref: list, got: list, undo_layout=None) -> tuple[float, float, str]:
    """Max abs and max relative error over the leaves (each relative to its own JAX scale).

    undo_layout: the Arch's `layout.to_torch`. The captures move every rank-4 torch array to
    the JAX layout, but not every rank-4 activation is an image: a [B, N, heads, head_dim]
    attention tensor has one layout on both sides. A torch array whose shape misses the JAX
    one but matches it with the move undone is compared as it was."""
    if len(ref) != len(got):
        return math.inf, math.inf, f"{len(ref)} JAX arrays vs {len(got)} torch arrays"
    worst = (0.0, 0.0, "")
    for k, (a, b) in enumerate(zip(ref, got)):
        if a.shape != b.shape and undo_layout is not None and undo_layout(b).shape == a.shape:
            b = undo_layout(b)
        if a.shape != b.shape:
            return math.inf, math.inf, f"array {k}: shape {a.shape} (JAX) vs {b.shape} (torch)"
        ab, rel, where = error_stats(a, b)
        if rel > worst[1] or (rel == worst[1] and ab > worst[0]):
            worst = (ab, rel, f"[{k}]{where}" if len(ref) > 1 else where)
    return worst


def compare_captures(jc: Capture, tc: Capture, jax_paths: dict, tol_p: float, tol_t: float,
                     undo_layout=None) -> list:
    """ModuleDiffs over the modules captured on both sides, in torch execution order
    (undo_layout: see `_leaves_error`)."""
    j = {r.name: r for r in jc.records}
    out = []
    for rec in tc.records:
        if rec.name not in j:
            continue
        ref = j[rec.name]
        pa, pr, where = _leaves_error(ref.out_primal, rec.out_primal, undo_layout)
        ta, tr, twhere = _leaves_error(ref.out_tangent, rec.out_tangent, undo_layout)
        _, ipr, _ = _leaves_error(ref.in_primal, rec.in_primal, undo_layout)
        _, itr, _ = _leaves_error(ref.in_tangent, rec.in_tangent, undo_layout)
        d = ModuleDiff(
            index=len(out), name=rec.name, jax_path=jax_paths.get(rec.name.split("#")[0], "?"),
            shape=tuple(ref.out_primal[0].shape) if ref.out_primal else (),
            primal_abs=pa, primal_rel=pr, tangent_abs=ta, tangent_rel=tr,
            input_primal_rel=ipr, input_tangent_rel=itr,
            primal_over=not pr <= tol_p, tangent_over=not tr <= tol_t,
            inputs_over=not (ipr <= tol_p and itr <= tol_t), where=where if pr > tol_p or tr <= tol_t else twhere,
            n_arrays=len(ref.out_primal),
        )
        out.append(d)
    return out


NETWORK = "<network>"  # the whole network (torch module name "")


def _display(name: str) -> str:
    return name if name else NETWORK


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def blame(modules: list) -> tuple[str, str, str | None]:
    """(blamed module, reason, first module over tolerance) from the module diffs.

    Every module before the first one over tolerance agrees. If that module's inputs agree,
    its own computation is wrong. Otherwise its input was made by code that runs between
    compared modules: the code of the lowest compared ancestor whose inputs still agree.
    """
    first = next((m for m in modules if m.over), None)
    if first is None:
        return "", "every module agrees within tolerance, primal and tangent", None
    what = " and ".join(w for w, bad in (("primal", first.primal_over), ("tangent", first.tangent_over)) if bad)
    head = (f"first module over tolerance: {_display(first.name)} ({what}; primal rel {first.primal_rel:.3e}, "
            f"tangent rel {first.tangent_rel:.3e}); every module before it agrees")
    if not first.inputs_over:
        return _display(first.name), f"{head}; its inputs agree, so the bug is in its own computation", \
            _display(first.name)
    by_name = {m.name: m for m in modules}
    owner = first.name.split("#")[0]
    while owner:
        owner = _parent(owner)
        if owner in by_name and not by_name[owner].inputs_over:
            break
    return _display(owner), (f"{head}; its input already differs (rel {first.input_primal_rel:.3e} primal, "
                             f"{first.input_tangent_rel:.3e} tangent), so that input was computed wrongly by "
                             f"the code of {_display(owner)} between its compared sub-modules (the lowest "
                             f"enclosing module whose own inputs agree)"), _display(first.name)


def diagnose_objective(objective: list[CheckResult], hints=_OBJECTIVE_HINTS) -> str:
    """What the first failing term (in the objective's order, `hints`) says, or that the
    network and objective agree."""
    by_name = {r.quantity: r for r in objective}
    failing = [name for name, _ in hints if name in by_name and not by_name[name].passed]
    failing += [r.quantity for r in objective if not r.passed and r.quantity not in failing]
    if not failing:
        return "network and objective agree: no divergence"
    first = failing[0]
    hint = dict(hints).get(first, "")
    r = by_name[first]
    where = f" at {r.where}" if r.where else ""
    return (f"network agrees layer by layer; divergence in the objective: {first} "
            f"(max rel {r.max_rel:.3e} > tol {r.tol:.0e}{where}; failing: {', '.join(failing)}). {hint}")


def depth_growth(modules: list, blocks: tuple) -> tuple[list, dict]:
    """Errors at the outputs of the repeated blocks and of the network, and their growth."""
    by_name = {m.name: m for m in modules}
    rows = [(b, by_name[b].primal_rel, by_name[b].tangent_rel) for b in blocks if b in by_name]
    if "" in by_name:
        rows.append((NETWORK, by_name[""].primal_rel, by_name[""].tangent_rel))
    growth = {}
    for k, key in ((1, "primal_per_block"), (2, "tangent_per_block")):
        vals = [r[k] for r in rows[: len(blocks)]]
        if len(vals) >= 2 and vals[0] > 0 and all(math.isfinite(v) and v > 0 for v in vals):
            growth[key] = (vals[-1] / vals[0]) ** (1.0 / (len(vals) - 1))
        else:
            growth[key] = None
    return rows, growth


@dataclass
class DebugCase:
    """Everything one debug run evaluates: weights on both sides, bundle, objective outputs."""

    arch: Any
    variant: Variant
    dtype: str
    device: str
    control: Any
    params_np: dict
    state_dict: dict
    bundle: Any  # the harness's InputBundle (JAX layout)
    inputs: NetInputs
    objective: list
    ref: Any  # the JAX objective's SideOutputs (terms in the JAX layout, gradients by torch name)
    engine: str
    attention: str

    @property
    def jvp(self) -> JvpOptions:
        return JvpOptions(self.engine, self.attention)


def prepare_case(variant: Variant, dtype: str = "float64", device: str = "cpu", *, seed: int = 0, batch: int = 6,
                 params_np: dict | None = None, control=None, engine: str = DEFAULT_ENGINE,
                 attention: str = DEFAULT_ATTENTION) -> DebugCase:
    """The harness's weights (every parameter randomised from `seed`, or given) and bundle
    (`seed + 1`), so a debug run reproduces the parity check it explains; runs the objective
    on both sides (with the control's bug on the torch side), the torch one with JVP engine
    `engine` and JVP attention `attention`."""
    arch = variant.arch
    # the suite's own pipeline, the weights kept for the captures; the objective's verdict as
    # the report gives it (float32 under the calibrated rule)
    sides = run_sides(variant, dtype, device, seed=seed, batch=batch, params_np=params_np, control=control,
                      jvp=JvpOptions(engine, attention), rule=DEFAULT_RULE, keep_weights=True)
    return DebugCase(arch, variant, dtype, device, control, sides.params_np, sides.state_dict, sides.bundle,
                     net_inputs(arch, variant, sides.bundle, sides.jax.terms),
                     objective_checks(arch, variant, sides.jax, sides.torch, dtype, device, own=sides.own,
                                      rule=DEFAULT_RULE), sides.jax, engine, attention)


def analyse(case: DebugCase) -> DebugResult:
    """Capture both networks module by module, compare, blame, diagnose."""
    arch, variant, dtype, device = case.arch, case.variant, case.dtype, case.device
    jc = jax_capture(arch, variant, case.params_np, case.inputs, dtype, device)
    module = build_torch(arch, variant.model_cfg, case.state_dict, dtype, device, case.control)
    tc = torch_capture(arch, variant, module, case.inputs, dtype, device, case.jvp)
    tol_p, tol_t = (tolerance(dtype, device, q, arch, variant.objective.quantity(q).tol_class)
                    for q in variant.objective.jvp_terms)
    mmap = module_map(arch, variant.model_cfg)
    modules = compare_captures(jc, tc, mmap.torch_to_jax, tol_p, tol_t, arch.layout.to_torch)
    blamed, reason, first = blame(modules)
    if first is not None:
        diagnosis = f"divergence in the network: blamed module {blamed}. {reason}"
    else:
        diagnosis = diagnose_objective(case.objective, variant.objective.hints)
        if not diagnosis.startswith("network and objective agree"):
            blamed, reason = OBJECTIVE, diagnosis
    rows, growth = depth_growth(modules, mmap.blocks)
    return DebugResult(
        arch=arch.name, variant=variant.name, dtype=dtype, device=device,
        control=None if case.control is None else case.control.name, tol_primal=tol_p, tol_tangent=tol_t,
        modules=modules, blamed=blamed, reason=reason, first_over=first, objective=case.objective,
        diagnosis=diagnosis, blocks=rows, growth=growth, torch_only=torch_only_modules(arch, variant, module),
        jax_only_names=sorted(set(jc.names) - set(tc.names)), engine=case.engine, attention=case.attention,
    )


def run_debug(variant: Variant, dtype: str = "float64", device: str = "cpu", *, seed: int = 0, batch: int = 6,
              params_np: dict | None = None, control=None, engine: str = DEFAULT_ENGINE,
              attention: str = DEFAULT_ATTENTION) -> DebugResult:
    """Debug one variant (optionally with a negative control injected into the torch side)."""
    return analyse(prepare_case(variant, dtype, device, seed=seed, batch=batch, params_np=params_np,
                                control=control, engine=engine, attention=attention))


def names_line_up(jc: Capture, tc: Capture) -> bool:
    """The same module names on both sides, in the same execution order."""
    return jc.names == tc.names


def blames(result: DebugResult, module: str) -> bool:
    """Whether `result` blames `module` ("" = the objective) or a sub-module of it."""
    if not module:
        return result.blamed == OBJECTIVE
    return result.blamed == module or result.blamed.startswith(module + ".")
