"""The parity harness: identical weights, inputs and randomness into both backends.

For one `Variant`, `run_variant`:
1. draws EVERY parameter at random into the JAX model's parameter shapes (zero-initialised
   layers make u = 0, so fresh weights prove nothing), in float64 rounded to the check's
   master dtype, or takes given weights;
2. evaluates the MeanFlow objective with gradients on the JAX side (one float64 input
   bundle cast to each side), then frees its copy of the weights;
3. converts the weights to torch through the architecture's table and evaluates the torch side;
4. compares u, du/dt, v_g, u_tgt, the per-sample loss, the loss and every parameter's
   gradient (mapped back through the table), relative to JAX's max magnitude.

Cost at production size (time, memory, what was removed): docs/BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch

from parity import convert
from parity.core.arch import Arch, Variant
from parity.core.compare import CheckResult, compare, compare_grads
from parity.core.controls import check_control
from parity.core.inputs import InputBundle, rounded_bundle
from parity.core.precision import jax_compiler_options
from parity.core.rule import DEFAULT_RULE, Float32Rule, OwnErrors, own_errors
from parity.core.sides import build_torch, from_torch, jax_device, jax_dtype, jax_inputs, torch_inputs
from parity.core.tolerances import tolerance
from torch_meanflow.objective import JvpOptions

TERMS = ("u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss")
# Terms of the data's shape (moved between the layouts); the others are per sample or scalar.
DATA_TERMS = ("u", "du_dt", "v_g", "u_tgt")
NONZERO_TERMS = ("u", "du_dt")  # agreement on u = du/dt = 0 proves nothing: such a check fails


@dataclass
class SideOutputs:
    """Objective terms (JAX layout, float64 numpy) and gradients by torch name."""

    terms: dict
    grads: dict = field(default_factory=dict)


def _x64():
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def master_dtype(dtype: str) -> str:
    """The dtype the harness keeps the weights in for a run compared in `dtype`: float32 for
    float32 (each side would round float64 weights to the same float32 values anyway), float64
    otherwise (bfloat16 keeps float64 masters so both sides round once, from the same values)."""
    return "float32" if dtype == "float32" else "float64"


def param_shapes(arch: Arch, model_cfg):
    """The Flax parameter tree of `model_cfg` as shape/dtype leaves (`Arch.jax_shapes`, or a
    float32 init when the architecture gives none)."""
    if arch.jax_shapes is not None:
        return arch.jax_shapes(model_cfg)
    _, init = arch.jax_build(model_cfg)
    return init(jax.random.PRNGKey(0), jnp.float32)


def random_params(arch: Arch, variant: Variant, seed: int, dtype: str = "float64") -> dict:
    """JAX-layout NumPy parameters of the variant's model with every leaf randomised, in `dtype`.

    The draws do not depend on `dtype`: float32 weights are the float64 ones rounded, so a
    float64 run of the reference on them (x.astype(float64)) sees exactly the weights that
    both float32 sides see. Only the shapes of the model are computed, not an initialisation.
    """
    from jax_meanflow.params import random_arrays

    _x64()
    return random_arrays(param_shapes(arch, variant.model_cfg), seed, dtype=np.dtype(jax_dtype(dtype)))


def trained_params(arch: Arch, variant: Variant, seed: int, steps: int, *, lr: float = 3e-3, batch: int = 6,
                   xla_compile: str = "fast", dtype: str = "float64") -> dict:
    """JAX parameters (NumPy in `dtype`) after `steps` Adam steps of MeanFlow from the standard init.

    The other realistic weight distribution besides full randomisation: the zero-initialised
    layers have moved off zero by training, not by fiat. Trains in `dtype` (the suite passes
    the master dtype of the check, so a float32 check trains in float32 and runs the very
    executable it compares) with the cached compiled loss-and-gradient of the variant at
    `batch` (the suite passes its own) and a NumPy Adam (b2 0.95) updated in place, leaf by
    leaf: the run holds the weights, the two moments and one gradient tree, no temporaries
    of the tree's size.
    """
    _x64()
    _, init = arch.jax_build(variant.model_cfg)
    ndt = np.dtype(jax_dtype(dtype))
    device = "cpu" if jax.default_backend() == "cpu" else "cuda"
    # The weights live once, as the executable's input arrays; each leaf is updated through
    # a NumPy copy of its own and put back, so no second copy of the tree exists.
    with jax.default_device(jax_device(device)):
        leaves, treedef = jax.tree_util.tree_flatten(jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, ndt), init(jax.random.PRNGKey(seed), jax_dtype(dtype))))
    b1, b2, eps = 0.9, 0.95, 1e-8
    m = [np.zeros(p.shape, ndt) for p in leaves]
    v = [np.zeros(p.shape, ndt) for p in leaves]
    fn = _jax_value_and_grad(arch, variant.model_cfg, variant.mf_cfg, xla_compile, device)
    for k in range(1, steps + 1):
        bundle = arch.make_bundle(variant, batch, seed + 1000 + k)
        with jax.default_device(jax_device(device)):  # called as run_jax calls it: the same executable
            _, grads = fn(jax.tree_util.tree_unflatten(treedef, leaves), *jax_inputs(arch, variant, bundle, dtype))
            grads = jax.tree_util.tree_leaves(grads)
            c1, c2 = 1 - b1**k, 1 - b2**k
            for i in range(len(leaves)):
                g = np.asarray(grads[i])
                grads[i] = None  # free each gradient once applied
                p = np.array(leaves[i])
                # b1 m + (1 - b1) g etc. with the same operations in the same order, in place.
                m[i] *= b1
                m[i] += (1 - b1) * g
                v[i] *= b2
                v[i] += (1 - b2) * g * g
                p -= lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + eps)
                leaves[i] = jnp.asarray(p)
            del grads
    del m, v
    for i in range(len(leaves)):
        leaves[i] = np.array(leaves[i])
    return jax.tree_util.tree_unflatten(treedef, leaves)


# The jitted loss-and-gradient per (arch, model config, objective config, compile mode,
# device), most recently used last. A compiled executable of a production-size network holds
# hundreds of MB (its buffers), so the suite forgets a variant's once it is done with it.
_COMPILED: dict = {}
_COMPILED_MAX = 64


def _jax_value_and_grad(arch: Arch, model_cfg, mf_cfg, xla_compile: str = "fast", device: str = "cpu"):
    """The jitted loss-and-gradient of one configuration, compiled once and reused
    (the negative controls and repeated runs change only the torch side); `xla_compile`:
    parity.core.precision.XLA_COMPILE. Keyed by the Arch object (compared by identity)."""
    key = (arch, model_cfg, mf_cfg, xla_compile, device)
    fn = _COMPILED.pop(key, None)
    if fn is None:
        fn = _build_value_and_grad(arch, model_cfg, mf_cfg, xla_compile, device)
    _COMPILED[key] = fn
    while len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    return fn


def forget_compiled(variant: Variant) -> int:
    """Drop the cached executables of `variant` (every dtype, compile mode and device), so
    their memory is freed; returns how many were dropped."""
    keys = [k for k in _COMPILED if k[0] is variant.arch and k[1] == variant.model_cfg and k[2] == variant.mf_cfg]
    for k in keys:
        del _COMPILED[k]
    return len(keys)


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc malloc_trim), so that
    the next side or variant does not stack its peak on the previous one's freed arrays."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _load_libc()


def _build_value_and_grad(arch: Arch, model_cfg, mf_cfg, xla_compile: str, device: str):
    from jax_meanflow.objective import meanflow_loss

    module, _ = arch.jax_build(model_cfg)

    def loss_fn(params, x, y, noise, null_y):
        out = meanflow_loss(arch.jax_u_fn(module, params), x, y, noise, mf_cfg, null_y=null_y, train=False)
        return out.loss, out

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                   compiler_options=jax_compiler_options(xla_compile, device))


def run_jax(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, dtype: str, device: str,
            xla_compile: str = "fast") -> SideOutputs:
    """The JAX objective with gradients in `dtype` on `device`: terms (JAX layout, float64
    NumPy) and gradients by torch name (NumPy in `dtype`, float32 for bfloat16). The device
    copy of the weights is freed on return; the gradients are converted leaf by leaf, each
    JAX buffer released once converted."""
    jdt = jax_dtype(dtype)
    with jax.default_device(jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jdt), params_np)
        fn = _jax_value_and_grad(arch, variant.model_cfg, variant.mf_cfg, xla_compile, device)
        (_, out), grads = fn(params, *jax_inputs(arch, variant, bundle, dtype))
        del params
    terms = {k: np.asarray(getattr(out, k), np.float64) for k in TERMS}
    del out
    keep = np.float32 if dtype == "bfloat16" else None  # NumPy has no bfloat16
    flat = {k: (np.asarray(a, keep) if keep else a) for k, a in convert.flatten_tree(grads).items()}
    del grads
    return SideOutputs(terms, convert.jax_to_torch(flat, arch.table, variant.model_cfg, consume=True))


def _grad_numpy(p: torch.nn.Parameter) -> np.ndarray:
    """A parameter's gradient as NumPy on the CPU (a view when it already is one; float32 for
    bfloat16, which NumPy lacks; zeros for a parameter the loss does not reach)."""
    g = p.grad if p.grad is not None else torch.zeros_like(p)
    g = g.detach()
    if g.dtype == torch.bfloat16:
        g = g.float()
    return g.cpu().numpy()


def run_torch(arch: Arch, variant: Variant, state_dict: dict, bundle: InputBundle, dtype: str, device: str,
              control=None, jvp: JvpOptions | None = None, module_train: bool = False) -> SideOutputs:
    """The torch objective with gradients, run with train=False; `jvp`: the JVP engine and
    attention (default JvpOptions(): "rules", "fused"), a control's engine taking precedence;
    module_train=True leaves the module in training mode, to show that dropout follows
    `train`, not `module.training`. Terms as float64 NumPy (JAX layout); gradients by name,
    NumPy in `dtype` (float32 for bfloat16), sharing memory with the freed module's grads."""
    import torch_meanflow.objective as tobj

    jvp = JvpOptions() if jvp is None else jvp
    if control is not None and control.engine is not None:
        jvp = JvpOptions(control.engine, jvp.attention)
    module = build_torch(arch, variant.model_cfg, state_dict, dtype, device, control, train=module_train, share=True)
    x, y, noise, null_y = torch_inputs(arch, variant, bundle, dtype, device)
    patch = control.objective() if control is not None and control.objective else contextlib.nullcontext()
    with patch:
        out = tobj.meanflow_loss(arch.torch_u_fn(module), x, y, noise, variant.mf_cfg, null_y=null_y, train=False,
                                 jvp=jvp)
    module.zero_grad(set_to_none=True)
    out.loss.backward()
    terms = {k: from_torch(arch, getattr(out, k), data=k in DATA_TERMS) for k in TERMS}
    del out
    grads = {name: _grad_numpy(p) for name, p in module.named_parameters()}
    return SideOutputs(terms, grads)


def objective_checks(arch: Arch, variant: Variant, ref: SideOutputs, got: SideOutputs, dtype: str,
                     device: str, own: OwnErrors | None = None, rule: Float32Rule | None = None) -> list[CheckResult]:
    """One result per objective term, then the gradients summarised as "grad" (the parameter
    nearest its budget named; every parameter's check in its info["per_parameter"]); `own`
    and a calibrated `rule`: each budget from the reference's own float32 error
    (parity.core.rule), the fixed tolerance reported beside it."""
    labels = dict(arch=arch.name, variant=variant.name, dtype=dtype, device=device)
    results = [
        compare(ref.terms[k], got.terms[k], quantity=k, tol=tolerance(dtype, device, k, arch),
                nonzero=k in NONZERO_TERMS, own_err=None if own is None else own.terms[k], rule=rule, **labels)
        for k in TERMS
    ]
    grads = compare_grads(ref.grads, got.grads, tol=tolerance(dtype, device, "grad", arch), own=own, rule=rule,
                          **labels)
    results.append(summarise_grads(grads))
    for r in results:
        r.info["per_parameter"] = None
    results[-1].info["per_parameter"] = [g.as_dict() for g in grads]
    return results


def prepare_weights(variant: Variant, seed: int, params_np: dict | None = None, control=None,
                    dtype: str = "float64"):
    """(JAX params, torch state dict): every parameter randomised from `seed` (or given),
    converted through the table, a control's conversion bug applied; random weights are
    kept in `master_dtype(dtype)` (given ones as they are)."""
    arch = variant.arch
    check_control(control, arch)
    if params_np is None:
        params_np = random_params(arch, variant, seed, master_dtype(dtype))
    return params_np, torch_state(variant, params_np, control)


def torch_state(variant: Variant, params_np: dict, control=None) -> dict:
    """The torch state dict of JAX-layout `params_np` (a control's conversion bug applied)."""
    state_dict = convert.jax_to_torch(params_np, variant.arch.table, variant.model_cfg)
    if control is not None and control.state is not None:
        state_dict = control.state(state_dict)
    return state_dict


def reference_own_errors(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, ref: SideOutputs,
                         device: str, xla_compile: str = "fast") -> OwnErrors:
    """The float32 reference's own error: `ref` (the JAX side in float32) against the JAX side
    in float64 on the very float32 weights and inputs both sides see, so that what it measures
    is float32 arithmetic alone. The float64 outputs are dropped once measured."""
    # float32 weights (the master copy already is) are widened to float64 on the JAX device by
    # run_jax itself: no float64 copy of the tree on the host.
    rounded = jax.tree_util.tree_map(lambda a: a if a.dtype == np.float32 else np.asarray(a, np.float32), params_np)
    truth = run_jax(arch, variant, rounded, rounded_bundle(bundle, np.float32), "float64", device, xla_compile)
    del rounded
    return own_errors(ref, truth)


def run_variant(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                params_np: dict | None = None, control=None, xla_compile: str = "fast",
                jvp: JvpOptions | None = None, rule: Float32Rule = DEFAULT_RULE,
                keep: dict | None = None) -> list[CheckResult]:
    """Compare every objective term and every gradient of one variant; one result each.

    `control` (parity.core.controls.Control) injects a known bug into the torch side;
    `xla_compile` ("fast" or "full", parity.core.precision.XLA_COMPILE) how XLA:CPU compiles
    the JAX reference; `jvp` the torch side's JVP engine and attention; `rule` how float32 is
    judged (parity.core.rule: by default calibrated by a float64 run of the reference,
    `reference_own_errors`); `keep`: a dict that receives the sides' `SideOutputs` ("jax",
    "torch") and the reference's own float32 error ("own", None unless calibrated) for
    further checks. One side runs at a time: the JAX weights are freed before the torch module
    is built from its state dict, which then becomes the module's parameters (no second copy).
    """
    arch = variant.arch
    check_control(control, arch)
    if params_np is None:
        params_np = random_params(arch, variant, seed, master_dtype(dtype))
    bundle = arch.make_bundle(variant, batch, seed + 1)
    ref = run_jax(arch, variant, params_np, bundle, dtype, device, xla_compile)
    own = None
    if dtype == "float32" and rule.calibrated:
        own = reference_own_errors(arch, variant, params_np, bundle, ref, device, xla_compile)
    state = [torch_state(variant, params_np, control)]
    del params_np  # the caller's weights stay theirs; random ones are freed here
    release_memory()
    got = run_torch(arch, variant, state.pop(), bundle, dtype, device, control, jvp)
    if keep is not None:
        keep.update(jax=ref, torch=got, own=own)
    return objective_checks(arch, variant, ref, got, dtype, device, own=own, rule=rule)


def summarise_grads(grads: list[CheckResult]) -> CheckResult:
    """The parameter gradient nearest its budget (largest `budget_used`), named in `where`;
    passes when every parameter passes."""
    worst = max(grads, key=lambda g: g.budget_used)
    out = CheckResult(**{**worst.as_dict(), "quantity": "grad", "info": dict(worst.info)})
    out.where = f"{worst.quantity[5:]} {worst.where}"
    out.passed = all(g.passed for g in grads)
    out.info["n_params"] = len(grads)
    return out
