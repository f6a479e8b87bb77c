"""The debugger's two whole-network studies: the precision matrix and the compare modes.

Both work on a `parity.debug.DebugCase` (weights, inputs and the JAX objective's outputs).

- `precision_matrix`: float64, float32 at highest precision, float32 at the frameworks'
  default precision (TF32 matmuls/convolutions on an NVIDIA GPU; on CPU there is no TF32,
  so "default" computes the same as "highest") and bfloat16, for both backends: errors of
  the network's output and its tangent (u and du/dt for MeanFlow: the JVP of the objective's
  network call, `Objective.jvp_point`, e.g. primals (z_t, t, r), tangents (v_g, 1, 0)) against
  a float64 JAX reference, and torch against JAX at the same setting; then the bf16-mixed
  rows (float32 weights, bfloat16 matmuls: torch autocast with the JVP inside it and outside
  it, Flax layers at dtype=bfloat16; parity/debug/mixed.py).
- `compare_modes`: the torch objective with every JVP engine (torch_meanflow.objective:
  "rules", "torch.func") and every attention implementation under a tangent
  (torch_meanflow.attention: the fused closed-form rule, SDPA's math kernel, the written-out
  `explicit_attention`, the flash kernel where it exists), each against JAX and against the
  default path; then torch eager against torch.compile on the network, with the number of
  graphs and ops Dynamo actually compiled (0 ops means the code ran eagerly).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from parity.core.arch import Arch
from parity.core.compare import error_stats
from parity.core.harness import run_torch
from parity.core.precision import pinned_precision
from parity.core.sides import build_torch, from_torch
from parity.debug.capture import DEFAULT_JVP, NetInputs, jax_capture, torch_inputs
from torch_meanflow.attention import JVP_IMPLS, jvp_attention
from torch_meanflow.objective import JVP_ENGINES, JvpOptions

# (label, dtype, strict precision)
PRECISION_SETTINGS = (
    ("float64", "float64", True),
    ("float32 highest", "float32", True),
    ("float32 default", "float32", False),
    ("bfloat16", "bfloat16", True),
)


def jax_u_du(case, dtype: str):
    """(u, du/dt) of the JAX network at the case's inputs in `dtype`, float64 NumPy, JAX layout
    (the last record of the capture, whose compiled function the debug run already holds)."""
    root = jax_capture(case.arch, case.variant, case.params_np, case.inputs, dtype, case.device).records[-1]
    return root.out_primal[0], root.out_tangent[0]


def _np(arch: Arch, x: torch.Tensor) -> np.ndarray:
    return from_torch(arch, x)


def _first(out):
    """The network's output, or its first (a network returning several, e.g. (u, v))."""
    return out[0] if isinstance(out, (tuple, list)) else out


def torch_u_du(arch: Arch, module, inputs: NetInputs, dtype: str, device: str = "cpu", fn_wrap=None,
               attention: str = DEFAULT_JVP.attention):
    """(output, its tangent) of the torch network (u and du/dt for MeanFlow) by
    `torch.func.jvp` of the objective's network call with JVP attention `attention`;
    `fn_wrap` may wrap the whole JVP function (torch.compile)."""
    primals, tangents, fixed, y = torch_inputs(arch, inputs, dtype, device)
    net = arch.torch_net(inputs.objective.convention, module)

    def jvp(primals, tangents):
        return torch.func.jvp(lambda *p: _first(inputs.objective.jvp_call(net, p, fixed, y)), primals, tangents)

    run = fn_wrap(jvp) if fn_wrap is not None else jvp
    with torch.no_grad(), jvp_attention(attention):
        u, du = run(primals, tangents)
    return _np(arch, u), _np(arch, du)


def _rel(ref, got) -> float | None:
    if ref is None:
        return None
    return float("inf") if got is None else error_stats(ref, got)[1]


def precision_matrix(case) -> list[dict]:
    """One row per (setting, backend): errors of u and du/dt vs float64 JAX, and vs the other
    side. The torch network is the case's (with its control's model bug, if any), its JVP by
    torch.func.jvp with the case's attention implementation."""
    arch, variant, inputs, device = case.arch, case.variant, case.inputs, case.device
    ref_u, ref_du = jax_u_du(case, "float64")
    rows = []
    for label, dtype, strict in PRECISION_SETTINGS:
        with pinned_precision(strict) as settings:
            ju, jdu = jax_u_du(case, dtype)
            module = build_torch(arch, variant.model_cfg, case.state_dict, dtype, device, case.control)
            tu, tdu = torch_u_du(arch, module, inputs, dtype, device, attention=case.attention)
        note = ""
        if label == "float32 default":
            note = ("TF32 allowed (matmuls and cuDNN convolutions)" if device == "cuda"
                    else "CPU: no TF32, the default precision computes as 'highest'")
        for backend, u, du in (("jax", ju, jdu), ("torch", tu, tdu)):
            rows.append(dict(
                setting=label, dtype=dtype, backend=backend, device=device,
                u_rel=_rel(ref_u, u), du_dt_rel=_rel(ref_du, du),
                u_rel_vs_jax=_rel(ju, tu) if backend == "torch" else None,
                du_dt_rel_vs_jax=_rel(jdu, tdu) if backend == "torch" else None,
                settings=settings, note=note,
            ))
        if label == "float32 highest":
            f32_jax = (ju, jdu)
    from parity.debug.mixed import mixed_rows

    with pinned_precision(True):
        rows += mixed_rows(case, ref_u, ref_du, f32_jax, _rel)
    return rows


# ----------------------------------------------------------------------------------
# Compare modes
# ----------------------------------------------------------------------------------


def _objective_paths(case) -> list:
    """(mode, u, du/dt or None, compile stats, note): the torch objective on every engine x attention."""
    runs = []
    for engine in JVP_ENGINES:
        for impl in JVP_IMPLS:
            mode = f"objective: engine {engine}, attention {impl}"
            try:
                out = run_torch(case.arch, case.variant, case.state_dict, case.bundle, case.dtype,
                                case.device, case.control, JvpOptions(engine, impl))
            except RuntimeError as err:  # e.g. the flash kernel needs CUDA and its package
                runs.append((mode, None, None, None, f"unavailable: {err}"))
                continue
            default = " (default)" if JvpOptions(engine, impl) == DEFAULT_JVP else ""
            primal, tangent = case.variant.objective.jvp_terms
            runs.append((mode + default, out.terms[primal], out.terms[tangent], None, ""))
    return runs


def _counting_backend(stats: dict):
    """Inductor, counting the graphs and ops Dynamo hands it (0 ops = the code ran eagerly)."""
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        stats["graphs"] += 1
        stats["ops"] += sum(n.op in ("call_function", "call_method", "call_module") for n in gm.graph.nodes)
        return compile_fx(gm, example_inputs)

    return backend


def _compiled(fn, stats: dict):
    torch._dynamo.reset()  # Dynamo's frame cache would otherwise carry skips over from earlier modes
    return torch.compile(fn, backend=_counting_backend(stats))


def _network_paths(case, compile: bool) -> list:
    """(mode, u, du/dt or None, compile stats, note): the torch network eager and compiled."""
    arch, inputs, dtype, device = case.arch, case.inputs, case.dtype, case.device
    module = build_torch(arch, case.variant.model_cfg, case.state_dict, dtype, device, case.control)
    primals, tangents, fixed, y = torch_inputs(arch, inputs, dtype, device)

    def call(mod, args):
        return _first(inputs.torch_call(arch, mod, args, fixed, y))

    u, du = torch_u_du(arch, module, inputs, dtype, device)
    runs = [("network: eager torch.func.jvp", u, du, None, "")]
    with torch.no_grad():
        u = _np(arch, call(module, primals))
    runs.append(("network: eager forward only (SDPA default kernel)", u, None, None, "no JVP on this path"))
    if not compile:
        return runs

    def forward_only(stats):
        with torch.no_grad():
            return _np(arch, call(_compiled(module, stats), primals)), None

    def compiled_jvp(stats):
        return torch_u_du(arch, module, inputs, dtype, device, fn_wrap=lambda f: _compiled(f, stats))

    def module_under_forward_ad(stats):
        compiled = _compiled(module, stats)
        with torch.no_grad(), fwAD.dual_level():
            out = call(compiled, tuple(fwAD.make_dual(p, d) for p, d in zip(primals, tangents)))
            u, du = fwAD.unpack_dual(out)
            return _np(arch, u), (None if du is None else _np(arch, du))

    for mode, fn in (("torch.compile(module), forward only", forward_only),
                     ("torch.compile(torch.func.jvp(module))", compiled_jvp),
                     ("torch.compile(module) under forward_ad", module_under_forward_ad)):
        stats = {"graphs": 0, "ops": 0}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Dynamo's notes on functorch internals
                u, du = fn(stats)
        except Exception as err:  # noqa: BLE001  a compiler failure is a finding to report, not a crash
            msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
            runs.append((f"network: {mode}", None, None, stats, f"failed: {type(err).__name__}: {msg[:300]}"))
            continue
        if fn is forward_only:
            note = "no JVP on this path"
        elif du is None:
            note = ("the compiled module returned no tangent: forward-AD dual tensors do not survive "
                    "torch.compile (du/dt silently lost)")
        elif stats["ops"] < 10:
            note = (f"Dynamo compiled {stats['ops']} ops: the JVP itself ran eagerly (graph break inside "
                    "torch.func.jvp), so agreement with eager says nothing about compiled code")
        else:
            note = ""
        runs.append((f"network: {mode}", u, du, stats, note))
    torch._dynamo.reset()
    return runs


def compare_modes(case, compile: bool = True) -> list[dict]:
    """One row per torch execution path: u and du/dt against JAX and against the default path.

    Objective rows compare with the JAX objective's u and du/dt and with the default
    engine/attention; network rows with the JAX network's JVP and with eager torch.func.jvp.
    """
    rows = []
    obj = _objective_paths(case)
    default = next((u, du) for mode, u, du, _, _ in obj if mode.endswith("(default)"))
    net = _network_paths(case, compile)
    ju, jdu = jax_u_du(case, case.dtype)
    refs = ((case.ref.terms["u"], case.ref.terms["du_dt"]), default), ((ju, jdu), (net[0][1], net[0][2]))
    for runs, ((ref_u, ref_du), (base_u, base_du)) in zip((obj, net), refs):
        for mode, u, du, stats, note in runs:
            jvp = u is not None and "no JVP" not in note
            rows.append(dict(
                mode=mode, dtype=case.dtype, device=case.device, compiled=stats, note=note,
                u_rel_vs_jax=None if u is None else _rel(ref_u, u),
                du_dt_rel_vs_jax=_rel(ref_du, du) if jvp else None,
                u_rel_vs_default=None if u is None else _rel(base_u, u),
                du_dt_rel_vs_default=_rel(base_du, du) if jvp else None,
            ))
    return rows
