"""The debugger's two whole-network studies: the precision matrix and the compare modes.

Both evaluate the network call of the MeanFlow JVP (u and du/dt at primals (z_t, t, r),
tangents (v_g, 1, 0)) at the debugger's inputs, not the whole objective.

- `precision_matrix`: float64, float32 at highest precision, float32 at the frameworks'
  default precision (TF32 matmuls/convolutions on an NVIDIA GPU; on CPU there is no TF32,
  so "default" computes the same as "highest") and bfloat16, for both backends; errors of
  u and du/dt against a float64 JAX reference, and torch against JAX at the same setting.
- `compare_modes`: torch eager vs torch.compile (same weights), and the attention paths of
  `torch_meanflow.attention` (SDPA math kernel under the JVP vs `explicit_attention`, and
  the default fast kernel on a plain forward), each against eager and against JAX.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from parity.archs import Arch, Variant, get_arch
from parity.compare import error_stats
from parity.debug_capture import JAX_DTYPES, NetInputs, build_torch_module, jax_device, torch_inputs
from parity.inputs import from_torch_data
from parity.precision import pinned_precision

# The module itself: the package re-exports the function under the same name, so
# `import torch_meanflow.attention as m` would bind the function.
tattn = importlib.import_module("torch_meanflow.attention")

# (label, dtype, strict precision)
PRECISION_SETTINGS = (
    ("float64", "float64", True),
    ("float32 highest", "float32", True),
    ("float32 default", "float32", False),
    ("bfloat16", "bfloat16", True),
)


@functools.lru_cache(maxsize=16)
def _jax_jvp_fn(arch_name: str, model_cfg):
    """Jitted (params, z, t, r, y, tz) -> (u, du/dt) of the network alone."""
    module, _ = get_arch(arch_name).jax_build(model_cfg)

    def run(params, z, t, r, y, tz):
        def net(z, t, r):
            return module.apply({"params": params}, z, t, t - r, y, train=False)

        return jax.jvp(net, (z, t, r), (tz, jnp.ones_like(t), jnp.zeros_like(r)))

    return jax.jit(run)


def jax_u_du(arch: Arch, variant: Variant, params_np: dict, inputs: NetInputs, dtype: str, device: str = "cpu"):
    """(u, du/dt) of the JAX network, float64 NumPy in the JAX layout."""
    jdt = JAX_DTYPES[dtype]
    with jax.default_device(jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jdt), params_np)
        z, t, r, tz = (jnp.asarray(a, jdt) for a in (inputs.z, inputs.t, inputs.r, inputs.tangent))
        u, du = _jax_jvp_fn(arch.name, variant.model_cfg)(params, z, t, r, arch.jax_y(inputs.bundle, jdt), tz)
    return np.asarray(u).astype(np.float64), np.asarray(du).astype(np.float64)


def _np(arch: Arch, x: torch.Tensor) -> np.ndarray:
    return from_torch_data(arch.name, x.detach().to("cpu", torch.float64).numpy())


def torch_u_du(arch: Arch, module, inputs: NetInputs, dtype: str, device: str = "cpu", fn_wrap=None):
    """(u, du/dt) of the torch network by `torch.func.jvp`, as the objective computes them.

    `fn_wrap` may wrap the whole JVP function (e.g. torch.compile).
    """
    z, t, r, y, tz = torch_inputs(arch, inputs, dtype, device)

    def jvp(z, t, r, tz):
        return torch.func.jvp(lambda z, t, r: module(z, t, t - r, y, train=False), (z, t, r),
                              (tz, torch.ones_like(t), torch.zeros_like(r)))

    run = fn_wrap(jvp) if fn_wrap is not None else jvp
    with torch.no_grad():
        u, du = run(z, t, r, tz)
    return _np(arch, u), _np(arch, du)


def _rel(ref, got) -> float:
    if got is None:
        return float("inf")
    return error_stats(ref, got)[1]


def precision_matrix(variant: Variant, params_np: dict, state_dict: dict, inputs: NetInputs,
                     device: str = "cpu", control=None) -> list[dict]:
    """One row per (setting, backend): errors of u and du/dt vs float64 JAX, and vs the other side.

    `control` (a negative control's model bug) is applied to the torch network, as in the debug run.
    """
    arch = get_arch(variant.arch)
    ref_u, ref_du = jax_u_du(arch, variant, params_np, inputs, "float64", device)
    rows = []
    for label, dtype, strict in PRECISION_SETTINGS:
        with pinned_precision(strict) as settings:
            ju, jdu = jax_u_du(arch, variant, params_np, inputs, dtype, device)
            module = build_torch_module(arch, variant, state_dict, dtype, device, control)
            tu, tdu = torch_u_du(arch, module, inputs, dtype, device)
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
    return rows


@contextlib.contextmanager
def explicit_attention_everywhere():
    """Route the torch networks' `attention` to `explicit_attention` (written out, op by op)."""
    original = tattn.attention
    patched = [mod for name, mod in list(sys.modules.items())
               if name.startswith("torch_meanflow.") and mod is not tattn and getattr(mod, "attention", None) is original]
    for mod in patched:
        mod.attention = tattn.explicit_attention
    try:
        yield
    finally:
        for mod in patched:
            mod.attention = original


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


def _compiled_runs(arch: Arch, module, inputs: NetInputs, dtype: str, device: str) -> list:
    """(mode, u, du or None, compile stats, note) for three ways to bring torch.compile to the JVP."""
    z, t, r, y, _ = torch_inputs(arch, inputs, dtype, device)
    runs = []
    stats = {"graphs": 0, "ops": 0}
    with torch.no_grad():
        u = _np(arch, _compiled(module, stats)(z, t, t - r, y, train=False))
    runs.append(("torch.compile(module), forward only", u, None, stats, "no JVP on this path"))

    stats = {"graphs": 0, "ops": 0}
    u, du = torch_u_du(arch, module, inputs, dtype, device, fn_wrap=lambda f: _compiled(f, stats))
    note = ""
    if stats["ops"] < 10:
        note = (f"Dynamo compiled {stats['ops']} ops: the JVP itself ran eagerly (graph break inside "
                "torch.func.jvp), so agreement with eager says nothing about compiled code")
    runs.append(("torch.compile(torch.func.jvp(module))", u, du, dict(stats), note))

    stats = {"graphs": 0, "ops": 0}
    z, t, r, y, tz = torch_inputs(arch, inputs, dtype, device)
    compiled = _compiled(module, stats)
    with torch.no_grad(), fwAD.dual_level():
        td = fwAD.make_dual(t, torch.ones_like(t))
        out = compiled(fwAD.make_dual(z, tz), td, td - fwAD.make_dual(r, torch.zeros_like(r)), y, train=False)
        u, du = fwAD.unpack_dual(out)
        u, du = _np(arch, u), (None if du is None else _np(arch, du))
    note = ("the compiled module returned no tangent: forward-AD dual tensors do not survive "
            "torch.compile (du/dt silently lost)") if du is None else ""
    runs.append(("torch.compile(module) under forward_ad", u, du, dict(stats), note))
    torch._dynamo.reset()
    return runs


def compare_modes(variant: Variant, params_np: dict, state_dict: dict, inputs: NetInputs, dtype: str,
                  device: str = "cpu", compile: bool = True, control=None) -> list[dict]:
    """One row per torch execution mode: u and du/dt against JAX and against torch eager.

    The same torch weights (and `control`'s model bug, if any) in every mode.
    """
    arch = get_arch(variant.arch)
    ju, jdu = jax_u_du(arch, variant, params_np, inputs, dtype, device)
    module = build_torch_module(arch, variant, state_dict, dtype, device, control)
    eu, edu = torch_u_du(arch, module, inputs, dtype, device)
    runs = [("eager, attention(): SDPA math kernel under the JVP", eu, edu, "")]
    with explicit_attention_everywhere():
        xu, xdu = torch_u_du(arch, module, inputs, dtype, device)
    runs.append(("eager, explicit_attention (written out)", xu, xdu, ""))
    z, t, r, y, _ = torch_inputs(arch, inputs, dtype, device)
    with torch.no_grad():
        fu = _np(arch, module(z, t, t - r, y, train=False))
    runs.append(("eager forward only: SDPA default kernel", fu, None, "no JVP on this path"))
    runs = [(mode, u, du, None, note) for mode, u, du, note in runs]
    if compile:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Dynamo's notes on functorch internals
            runs += _compiled_runs(arch, module, inputs, dtype, device)
    rows = []
    for mode, u, du, stats, note in runs:
        rows.append(dict(
            mode=mode, dtype=dtype, device=device, compiled=stats,
            u_rel_vs_jax=_rel(ju, u), du_dt_rel_vs_jax=None if "no JVP" in note else _rel(jdu, du),
            u_rel_vs_eager=_rel(eu, u), du_dt_rel_vs_eager=None if "no JVP" in note else _rel(edu, du),
            note=note,
        ))
    return rows
