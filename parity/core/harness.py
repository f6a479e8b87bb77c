"""The parity harness: identical weights, inputs and randomness into both backends.

For one `Variant`, `run_variant`:
1. draws EVERY parameter at random into the JAX model's parameter shapes (zero-initialised
   layers make u = 0, so fresh weights prove nothing), in float64 rounded to the check's
   master dtype, or takes given weights;
2. evaluates the variant's objective (`Variant.objective`, default MeanFlow) with gradients
   on the JAX side (one float64 input bundle, `Objective.make_bundle`, cast to each side),
   then frees its copy of the weights;
3. converts the weights to torch through the architecture's table and evaluates the torch side;
4. compares every quantity the objective declares (MeanFlow: u, du/dt, v_g, u_tgt, the
   per-sample loss, the loss) and every parameter's gradient of its loss (mapped back
   through the table), relative to JAX's max magnitude.

Cost at production size (time, memory, what was removed): docs/BENCHMARKS.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import warnings
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch

from parity import convert
from parity.core.arch import Arch, Variant
from parity.core.aux_nets import jax_aux_inputs, torch_aux_nets
from parity.core.compare import CheckResult, compare, compare_grads
from parity.core.controls import check_control
from parity.core.executables import executable, forget_compiled, precompile  # noqa: F401  (re-exported)
from parity.core.inputs import InputBundle, rounded_bundle
from parity.core.rule import DEFAULT_RULE, Float32Rule, OwnErrors, own_errors_from
from parity.core.meanflow import MEANFLOW
from parity.core.sides import build_torch, from_torch, jax_device, jax_dtype
from parity.core.tolerances import tolerance
from torch_meanflow.objective import JvpOptions

# The default objective's compared terms (each objective declares its own: Objective.quantities).
TERMS = MEANFLOW.names
DATA_TERMS = MEANFLOW.data_names


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
    """JAX parameters (NumPy in `dtype`) after `steps` Adam steps of the variant's objective from
    the standard init.

    The other realistic weight distribution besides full randomisation: the zero-initialised
    layers have moved off zero by training, not by fiat. Trains in `dtype` (the suite passes
    the master dtype of the check, so a float32 check trains in float32 and runs the very
    executable it compares) with the cached compiled loss-and-gradient of the variant at
    `batch` (the suite passes its own) and Adam (b2 0.95) updated in place on the NumPy
    leaves, leaf by leaf: the run holds the weights, the two moments and one gradient tree,
    no temporaries of the tree's size.
    """
    _x64()
    _, init = arch.jax_build(variant.model_cfg)
    ndt = np.dtype(jax_dtype(dtype))
    device = "cpu" if jax.default_backend() == "cpu" else "cuda"
    # The weights live once on the host, updated in place; each step hands the executable a
    # device copy, which it turns into the gradients (donated), so two trees exist at once.
    with jax.default_device(jax_device(device)):
        leaves, treedef = jax.tree_util.tree_flatten(init(jax.random.PRNGKey(seed), jax_dtype(dtype)))
    leaves = [np.array(p, ndt) for p in leaves]
    b1, b2, eps = 0.9, 0.95, 1e-8
    m = [np.zeros(p.shape, ndt) for p in leaves]
    v = [np.zeros(p.shape, ndt) for p in leaves]
    for k in range(1, steps + 1):
        bundle = variant.objective.make_bundle(variant, batch, seed + 1000 + k)
        with jax.default_device(jax_device(device)):  # called as run_jax calls it: the same executable
            inputs = jax_side_inputs(variant, bundle, dtype)
            params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(p) for p in leaves])
            _, grads = executable(variant, params, inputs, dtype, device, xla_compile)(params, *inputs)
            del params
            grads = jax.tree_util.tree_leaves(grads)
        c1, c2 = 1 - b1**k, 1 - b2**k
        for i, p in enumerate(leaves):
            with warnings.catch_warnings():  # the JAX buffer is read-only; torch only reads it here
                warnings.simplefilter("ignore", UserWarning)
                g = torch.from_numpy(np.asarray(grads[i]))
            grads[i] = None  # free each gradient once applied
            # Adam in place on the NumPy leaves (torch views of them: multi-threaded, one
            # temporary per leaf): p -= (lr / c1) m / (sqrt(v / c2) + eps).
            mt, vt = torch.from_numpy(m[i]), torch.from_numpy(v[i])
            mt.mul_(b1).add_(g, alpha=1 - b1)
            vt.mul_(b2).addcmul_(g, g, value=1 - b2)
            torch.from_numpy(p).addcdiv_(mt, (vt / c2).sqrt_().add_(eps), value=-lr / c1)
            del g
        del grads
        release_memory(collect=False)  # each step's freed gradient buffers back to the OS before the next
    del m, v
    return jax.tree_util.tree_unflatten(treedef, leaves)


def release_memory(collect: bool = True) -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc malloc_trim), so that
    the next side or variant does not stack its peak on the previous one's freed arrays;
    `collect=False`: the trim alone (milliseconds; a full collection takes a few tenths of a
    second in a large process), where reference counting has already freed the arrays."""
    if collect:
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


def jax_side_inputs(variant: Variant, bundle, dtype: str) -> tuple:
    """The inputs of the variant's compiled JAX loss: its objective's (`Objective.jax_inputs`),
    then the weights of its auxiliary networks, if any (parity.core.aux_nets)."""
    return tuple(variant.objective.jax_inputs(variant, bundle, dtype)) + jax_aux_inputs(variant.objective, dtype)


def _jax_outputs(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, dtype: str, device: str,
                 xla_compile: str = "fast", consume: bool = False) -> tuple[dict, dict]:
    """(terms as float64 NumPy in the JAX layout, the gradients as a flat {"a/b": array} dict
    of JAX arrays in `dtype`). The device copy of the weights is donated to the executable,
    which writes the gradients into it (same shapes): one tree on the device, not two.
    `consume`: the caller gives `params_np` up (it is emptied), each host leaf freed once on
    the device."""
    jdt = jax_dtype(dtype)
    objective = variant.objective
    with jax.default_device(jax_device(device)):
        inputs = jax_side_inputs(variant, bundle, dtype)
        fn = executable(variant, params_np, inputs, dtype, device, xla_compile)
        leaves, treedef = jax.tree_util.tree_flatten(params_np)
        if consume:
            params_np.clear()
        for i, a in enumerate(leaves):
            leaves[i] = jnp.asarray(a, dtype=jdt)
            del a
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        del leaves
        (_, out), grads = fn(params, *inputs)
        del params
    terms = {k: np.asarray(out[k], np.float64) for k in objective.names}
    del out
    flat = convert.flatten_tree(grads)
    del grads
    return terms, flat


def run_jax(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, dtype: str, device: str,
            xla_compile: str = "fast", consume: bool = False) -> SideOutputs:
    """The variant's JAX objective with gradients in `dtype` on `device`: terms (JAX layout, float64
    NumPy) and gradients by torch name (NumPy in `dtype`, float32 for bfloat16). The device
    copy of the weights becomes the gradients; they are converted leaf by leaf, each JAX
    buffer released once converted. `consume`: `params_np` is given up (emptied) and each
    host leaf freed once copied to the device."""
    terms, flat = _jax_outputs(arch, variant, params_np, bundle, dtype, device, xla_compile, consume)
    if dtype == "bfloat16":  # NumPy has no bfloat16
        flat = {k: np.asarray(a, np.float32) for k, a in flat.items()}
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
    """The variant's torch objective with gradients, run with train=False; `jvp`: the JVP
    engine and attention (default JvpOptions(): "rules", "fused"), a control's engine taking
    precedence;
    module_train=True leaves the module in training mode, to show that dropout follows
    `train`, not `module.training`. Terms as float64 NumPy (JAX layout); gradients by name,
    NumPy in `dtype` (float32 for bfloat16), sharing memory with the freed module's grads."""
    objective = variant.objective
    jvp = JvpOptions() if jvp is None else jvp
    if control is not None and control.engine is not None:
        jvp = JvpOptions(control.engine, jvp.attention)
    module = build_torch(arch, variant.model_cfg, state_dict, dtype, device, control, train=module_train, share=True)
    inputs = objective.torch_inputs(variant, bundle, dtype, device)
    patch = control.objective() if control is not None and control.objective else contextlib.nullcontext()
    aux = {"aux": torch_aux_nets(objective, dtype, device)} if objective.aux else {}
    with patch:
        out = objective.torch_loss(arch.torch_net(objective.convention, module), inputs, variant.mf_cfg, jvp, **aux)
    module.zero_grad(set_to_none=True)
    out[objective.loss].backward()
    terms = {q.name: from_torch(arch, out[q.name], data=q.data) for q in objective.quantities}
    del out
    grads = {name: _grad_numpy(p) for name, p in module.named_parameters()}
    return SideOutputs(terms, grads)


def objective_checks(arch: Arch, variant: Variant, ref: SideOutputs, got: SideOutputs, dtype: str,
                     device: str, own: OwnErrors | None = None, rule: Float32Rule | None = None) -> list[CheckResult]:
    """One result per quantity of the variant's objective, then the gradients of its loss
    summarised as "grad" (the parameter
    nearest its budget named; every parameter's check in its info["per_parameter"]); `own`
    and a calibrated `rule`: each budget from the reference's own float32 error
    (parity.core.rule), the fixed tolerance reported beside it."""
    labels = dict(arch=arch.name, variant=variant.name, dtype=dtype, device=device)
    results = [
        compare(ref.terms[q.name], got.terms[q.name], quantity=q.name,
                tol=tolerance(dtype, device, q.name, arch, q.tol_class), nonzero=q.nonzero,
                own_err=None if own is None else own.terms[q.name], rule=rule, **labels)
        for q in variant.objective.quantities
    ]
    grads = compare_grads(ref.grads, got.grads, tol=tolerance(dtype, device, "grad", arch), own=own, rule=rule,
                          **labels)
    results.append(summarise_grads(grads))
    for r in results:
        r.info["per_parameter"] = None
    results[-1].info["per_parameter"] = [g.as_dict() for g in grads]
    return results


def torch_state(variant: Variant, params_np: dict, control=None, consume: bool = False) -> dict:
    """The torch state dict of JAX-layout `params_np` (a control's conversion bug applied);
    `consume`: the caller gives `params_np` up (it is emptied), so each JAX-layout leaf is
    freed once its torch copy exists and one tree plus one leaf exist at a time."""
    if consume:
        flat = convert.flatten_tree(params_np)
        params_np.clear()
        state_dict = convert.jax_to_torch(flat, variant.arch.table, variant.model_cfg, consume=True)
    else:
        state_dict = convert.jax_to_torch(params_np, variant.arch.table, variant.model_cfg)
    if control is not None and control.state is not None:
        state_dict = control.state(state_dict)
    return state_dict


def reference_own_errors(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, ref: SideOutputs,
                         device: str, xla_compile: str = "fast") -> OwnErrors:
    """The float32 reference's own error: `ref` (the JAX side in float32) against the JAX side
    in float64 on the very float32 weights and inputs both sides see, so that what it measures
    is float32 arithmetic alone. Each float64 gradient is reduced to its error as it is
    converted and dropped: the float64 tree exists once, on the device, as the executable's
    donated weights."""
    # float32 weights (the master copy already is) are widened to float64 on the JAX device:
    # no float64 copy of the tree on the host.
    rounded = jax.tree_util.tree_map(lambda a: a if a.dtype == np.float32 else np.asarray(a, np.float32), params_np)
    terms, flat = _jax_outputs(arch, variant, rounded, rounded_bundle(bundle, np.float32), "float64", device,
                               xla_compile)
    del rounded
    return own_errors_from(ref, terms, convert.iter_jax_to_torch(flat, arch.table, variant.model_cfg))


def variant_bundle(variant: Variant, batch: int, seed: int, **options) -> InputBundle:
    """The input bundle of a run whose weights come from `seed`: the variant's own bundle
    (`Objective.make_bundle`; MeanFlow's is the Arch's `make_bundle`) drawn from seed + 1 at `batch` (`options`: the Arch's bundle options,
    e.g. its benchmark inputs). Every tool that reproduces a parity run (the suite, the
    debugger, the checks, the benchmarks) draws its inputs here."""
    return variant.objective.make_bundle(variant, batch, seed + 1, **options)


@dataclass
class Sides:
    """One variant's pipeline run (`run_sides`): the float64 `bundle` (JAX layout), the
    reference's and the port's `SideOutputs` (`jax`, `torch`), the reference's own float32
    error under a calibrated rule (`own`, else None) and, with keep_weights, the JAX-layout
    weights and the torch state dict they were converted to."""

    bundle: InputBundle
    jax: SideOutputs | None
    torch: SideOutputs | None
    own: OwnErrors | None = None
    params_np: dict | None = None
    state_dict: dict | None = None


def _direct(_label: str, fn, *args, **kwargs):
    return fn(*args, **kwargs)


def run_sides(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
              params_np: dict | None = None, control=None, xla_compile: str = "fast",
              jvp: JvpOptions | None = None, rule: Float32Rule = DEFAULT_RULE, keep_compiled: bool = True,
              keep_weights: bool = False, step=_direct) -> Sides:
    """The parity pipeline of one variant: weights (every leaf random from `seed`, in the
    master dtype, or `params_np`), the bundle of `seed` (`variant_bundle`), the JAX objective
    with gradients, under a calibrated float32 `rule` its float64 truth on the same float32
    numbers (`reference_own_errors`), then the torch objective on the converted weights (a
    `control`'s bug injected). One side runs at a time: random weights are converted leaf by
    leaf and freed before the torch module is built, unless `keep_weights` (the debugger
    captures both networks on them later). `keep_compiled=False`: each JAX executable is
    forgotten once run; `step(label, fn, *args)` runs each stage (a benchmark times them).
    """
    arch = variant.arch
    check_control(control, arch, variant.objective)
    owned = params_np is None and not keep_weights
    if params_np is None:
        params_np = step("random weights", random_params, arch, variant, seed, master_dtype(dtype))
    bundle = variant_bundle(variant, batch, seed)
    dtypes = step("compile", compile_variant, variant, dtype, device, rule=rule, xla_compile=xla_compile,
                  params=params_np, bundle=bundle)
    ref = step(f"jax {dtype}", run_jax, arch, variant, params_np, bundle, dtype, device, xla_compile)
    if not keep_compiled:
        forget_compiled(variant, (dtype,))
    release_memory(collect=False)
    own = None
    if len(dtypes) > 1:  # calibrated: the float64 truth
        own = step("jax float64 truth", reference_own_errors, arch, variant, params_np, bundle, ref, device,
                   xla_compile)
        if not keep_compiled:
            forget_compiled(variant, ("float64",))
        release_memory(collect=False)
    # the caller's weights stay theirs; random ones are converted leaf by leaf and freed
    state = [step("convert", torch_state, variant, params_np, control, consume=owned)]
    kept = (params_np, state[0]) if keep_weights else (None, None)
    del params_np
    release_memory()
    got = step(f"torch {dtype}", run_torch, arch, variant, state.pop(), bundle, dtype, device, control, jvp)
    return Sides(bundle, ref, got, own, *kept)


def run_variant(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                params_np: dict | None = None, control=None, xla_compile: str = "fast",
                jvp: JvpOptions | None = None, rule: Float32Rule = DEFAULT_RULE,
                keep: dict | None = None, keep_compiled: bool = True) -> list[CheckResult]:
    """Compare every objective term and every gradient of one variant; one result each
    (`run_sides`, then `objective_checks`).

    `control` (parity.core.controls.Control) injects a known bug into the torch side;
    `xla_compile` ("fast" or "full", parity.core.precision.XLA_COMPILE) how XLA:CPU compiles
    the JAX reference; `jvp` the torch side's JVP engine and attention; `rule` how float32 is
    judged (parity.core.rule: by default calibrated by a float64 run of the reference);
    `keep`: a dict that receives the sides' `SideOutputs` ("jax", "torch") and the
    reference's own float32 error ("own") for further checks; `keep_compiled=False`: each
    JAX executable is forgotten once run, for a variant that is not run again.
    """
    sides = run_sides(variant, dtype, device, seed=seed, batch=batch, params_np=params_np, control=control,
                      xla_compile=xla_compile, jvp=jvp, rule=rule, keep_compiled=keep_compiled)
    if keep is not None:
        keep.update(jax=sides.jax, torch=sides.torch, own=sides.own)
    return objective_checks(variant.arch, variant, sides.jax, sides.torch, dtype, device, own=sides.own, rule=rule)


def compile_variant(variant: Variant, dtype: str, device: str = "cpu", *, batch: int = 6, seed: int = 0,
                    rule: Float32Rule = DEFAULT_RULE, xla_compile: str = "fast", params=None,
                    bundle: InputBundle | None = None) -> tuple[str, ...]:
    """Compile the JAX executables `run_variant` runs for `variant` in `dtype` (the
    reference's and, for a calibrated float32 check, its float64 truth's) concurrently, one
    core each; `params`: the weights (default: the model's parameter shapes); `bundle`: the
    inputs (default: the bundle of `seed` + 1 at `batch`). Returns their dtypes, the
    reference's first."""
    dtypes = (dtype, "float64") if dtype == "float32" and rule.calibrated else (dtype,)
    params = param_shapes(variant.arch, variant.model_cfg) if params is None else params
    if bundle is None:
        bundle = variant_bundle(variant, batch, seed)
    with jax.default_device(jax_device(device)):
        precompile([(variant, params, jax_side_inputs(variant, bundle, d), d) for d in dtypes], device,
                   xla_compile)
    return dtypes


def summarise_grads(grads: list[CheckResult]) -> CheckResult:
    """The parameter gradient nearest its budget (largest `budget_used`), named in `where`;
    passes when every parameter passes."""
    worst = max(grads, key=lambda g: g.budget_used)
    out = CheckResult(**{**worst.as_dict(), "quantity": "grad", "info": dict(worst.info)})
    out.where = f"{worst.quantity[5:]} {worst.where}"
    out.passed = all(g.passed for g in grads)
    out.info["n_params"] = len(grads)
    return out
