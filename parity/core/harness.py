"""The parity harness: identical weights, inputs and randomness into both backends.

For one `Variant`, `run_variant`:
1. builds the JAX model, initialises it and randomises EVERY parameter (zero-initialised
   layers make u = 0, so fresh weights prove nothing) in float64, or takes given weights;
2. converts the weights to torch through the architecture's table;
3. casts one float64 input bundle to each side;
4. evaluates the MeanFlow objective on both sides, with gradients;
5. compares u, du/dt, v_g, u_tgt, the per-sample loss, the loss and every parameter's
   gradient (mapped back through the table), relative to JAX's max magnitude.
"""
from __future__ import annotations

import contextlib
import functools
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


def random_params(arch: Arch, variant: Variant, seed: int) -> dict:
    """Float64 JAX parameters of the variant's model with every leaf randomised."""
    from jax_meanflow.params import randomize_params

    _x64()
    _, init = arch.jax_build(variant.model_cfg)
    params = init(jax.random.PRNGKey(seed), jnp.float64)
    params = randomize_params(params, seed)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


def trained_params(arch: Arch, variant: Variant, seed: int, steps: int, *, lr: float = 3e-3, batch: int = 6,
                   xla_compile: str = "fast") -> dict:
    """Float64 JAX parameters after `steps` Adam steps of MeanFlow from the standard init.

    The other realistic weight distribution besides full randomisation: the zero-initialised
    layers have moved off zero by training, not by fiat. Uses the cached compiled
    loss-and-gradient of the variant (no extra compilation) and a NumPy Adam (b2 0.95).
    """
    _x64()
    _, init = arch.jax_build(variant.model_cfg)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), init(jax.random.PRNGKey(seed), jnp.float64))
    b1, b2, eps = 0.9, 0.95, 1e-8
    m = jax.tree_util.tree_map(np.zeros_like, params)
    v = jax.tree_util.tree_map(np.zeros_like, params)
    device = "cpu" if jax.default_backend() == "cpu" else "cuda"
    fn = _jax_value_and_grad(arch, variant.model_cfg, variant.mf_cfg, xla_compile, device)
    for k in range(1, steps + 1):
        bundle = arch.make_bundle(variant, batch, seed + 1000 + k)
        _, grads = fn(params, *jax_inputs(arch, variant, bundle, "float64"))
        grads = jax.tree_util.tree_map(np.asarray, grads)
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - lr * (m_ / (1 - b1**k)) / (np.sqrt(v_ / (1 - b2**k)) + eps), params, m, v
        )
    return params


@functools.lru_cache(maxsize=64)
def _jax_value_and_grad(arch: Arch, model_cfg, mf_cfg, xla_compile: str = "fast", device: str = "cpu"):
    """The jitted loss-and-gradient of one configuration, compiled once and reused
    (the negative controls and repeated runs change only the torch side); `xla_compile`:
    parity.core.precision.XLA_COMPILE. Keyed by the Arch object (compared by identity)."""
    from jax_meanflow.objective import meanflow_loss

    module, _ = arch.jax_build(model_cfg)

    def loss_fn(params, x, y, noise, null_y):
        out = meanflow_loss(arch.jax_u_fn(module, params), x, y, noise, mf_cfg, null_y=null_y, train=False)
        return out.loss, out

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                   compiler_options=jax_compiler_options(xla_compile, device))


def run_jax(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, dtype: str, device: str,
            xla_compile: str = "fast") -> SideOutputs:
    jdt = jax_dtype(dtype)
    with jax.default_device(jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jdt), params_np)
        fn = _jax_value_and_grad(arch, variant.model_cfg, variant.mf_cfg, xla_compile, device)
        (_, out), grads = fn(params, *jax_inputs(arch, variant, bundle, dtype))
    terms = {k: np.asarray(getattr(out, k), np.float64) for k in TERMS}
    grads_np = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), grads)
    return SideOutputs(terms, convert.jax_to_torch(grads_np, arch.table, variant.model_cfg))


def run_torch(arch: Arch, variant: Variant, state_dict: dict, bundle: InputBundle, dtype: str, device: str,
              control=None, jvp: JvpOptions | None = None, module_train: bool = False) -> SideOutputs:
    """The torch objective with gradients, run with train=False; `jvp`: the JVP engine and
    attention (default JvpOptions(): "rules", "fused"), a control's engine taking precedence;
    module_train=True leaves the module in training mode, to show that dropout follows
    `train`, not `module.training`."""
    import torch_meanflow.objective as tobj

    jvp = JvpOptions() if jvp is None else jvp
    if control is not None and control.engine is not None:
        jvp = JvpOptions(control.engine, jvp.attention)
    module = build_torch(arch, variant.model_cfg, state_dict, dtype, device, control, train=module_train)
    x, y, noise, null_y = torch_inputs(arch, variant, bundle, dtype, device)
    patch = control.objective() if control is not None and control.objective else contextlib.nullcontext()
    with patch:
        out = tobj.meanflow_loss(arch.torch_u_fn(module), x, y, noise, variant.mf_cfg, null_y=null_y, train=False,
                                 jvp=jvp)
    module.zero_grad(set_to_none=True)
    out.loss.backward()
    terms = {k: from_torch(arch, getattr(out, k), data=k in DATA_TERMS) for k in TERMS}
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().double().numpy()
        for name, p in module.named_parameters()
    }
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


def prepare_weights(variant: Variant, seed: int, params_np: dict | None = None, control=None):
    """(JAX params, torch state dict): every parameter randomised from `seed` (or given),
    converted through the table, a control's conversion bug applied."""
    arch = variant.arch
    check_control(control, arch)
    if params_np is None:
        params_np = random_params(arch, variant, seed)
    state_dict = convert.jax_to_torch(params_np, arch.table, variant.model_cfg)
    if control is not None and control.state is not None:
        state_dict = control.state(state_dict)
    return params_np, state_dict


def reference_own_errors(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, ref: SideOutputs,
                         device: str, xla_compile: str = "fast") -> OwnErrors:
    """The float32 reference's own error: `ref` (the JAX side in float32) against the JAX side
    in float64 on the very float32 weights and inputs both sides see, so that what it measures
    is float32 arithmetic alone. The float64 outputs are dropped once measured."""
    rounded = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32).astype(np.float64), params_np)
    truth = run_jax(arch, variant, rounded, rounded_bundle(bundle, np.float32), "float64", device, xla_compile)
    del rounded
    return own_errors(ref, truth)


def run_variant(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                params_np: dict | None = None, control=None, xla_compile: str = "fast",
                jvp: JvpOptions | None = None, rule: Float32Rule = DEFAULT_RULE) -> list[CheckResult]:
    """Compare every objective term and every gradient of one variant; one result each.

    `control` (parity.core.controls.Control) injects a known bug into the torch side;
    `xla_compile` ("fast" or "full", parity.core.precision.XLA_COMPILE) how XLA:CPU compiles
    the JAX reference; `jvp` the torch side's JVP engine and attention; `rule` how float32 is
    judged (parity.core.rule: by default calibrated by a float64 run of the reference,
    `reference_own_errors`).
    """
    arch = variant.arch
    params_np, state_dict = prepare_weights(variant, seed, params_np, control)
    bundle = arch.make_bundle(variant, batch, seed + 1)
    ref = run_jax(arch, variant, params_np, bundle, dtype, device, xla_compile)
    own = None
    if dtype == "float32" and rule.calibrated:
        own = reference_own_errors(arch, variant, params_np, bundle, ref, device, xla_compile)
    got = run_torch(arch, variant, state_dict, bundle, dtype, device, control, jvp)
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
