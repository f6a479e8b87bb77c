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
from parity.core.arch import Arch, Variant, get_arch
from parity.core.compare import CheckResult, compare, compare_grads
from parity.core.inputs import InputBundle, from_torch_data, to_torch_data
from parity.core.precision import jax_compiler_options
from parity.core.tolerances import tolerance

TERMS = ("u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss")

_JAX_DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class SideOutputs:
    """Objective terms (JAX layout, float64 numpy) and gradients by torch name."""

    terms: dict
    grads: dict = field(default_factory=dict)


def random_params(arch: Arch, variant: Variant, seed: int) -> dict:
    """Float64 JAX parameters of the variant's model with every leaf randomised."""
    from jax_meanflow.params import randomize_params

    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
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
    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    _, init = arch.jax_build(variant.model_cfg)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), init(jax.random.PRNGKey(seed), jnp.float64))
    b1, b2, eps = 0.9, 0.95, 1e-8
    m = jax.tree_util.tree_map(np.zeros_like, params)
    v = jax.tree_util.tree_map(np.zeros_like, params)
    device = "cpu" if jax.default_backend() == "cpu" else "cuda"
    fn = _jax_value_and_grad(arch.name, variant.model_cfg, variant.mf_cfg, xla_compile, device)
    for k in range(1, steps + 1):
        bundle = arch.make_bundle(variant, batch, seed + 1000 + k)
        _, grads = fn(params, *_jax_inputs(arch, variant, bundle, jnp.float64))
        grads = jax.tree_util.tree_map(np.asarray, grads)
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - lr * (m_ / (1 - b1**k)) / (np.sqrt(v_ / (1 - b2**k)) + eps), params, m, v
        )
    return params


def _jax_device(device: str):
    kind = "gpu" if device == "cuda" else "cpu"
    return jax.devices(kind)[0]


@functools.lru_cache(maxsize=64)
def _jax_value_and_grad(arch_name: str, model_cfg, mf_cfg, xla_compile: str = "fast", device: str = "cpu"):
    """The jitted loss-and-gradient of one configuration, compiled once and reused
    (the negative controls and repeated runs change only the torch side); `xla_compile`:
    parity.core.precision.XLA_COMPILE."""
    from jax_meanflow.objective import meanflow_loss

    arch = get_arch(arch_name)
    module, _ = arch.jax_build(model_cfg)

    def loss_fn(params, x, y, noise, null_y):
        out = meanflow_loss(arch.jax_u_fn(module, params), x, y, noise, mf_cfg, null_y=null_y, train=False)
        return out.loss, out

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                   compiler_options=jax_compiler_options(xla_compile, device))


def _jax_inputs(arch: Arch, variant: Variant, bundle: InputBundle, jdt):
    """(x, y, noise, null_y) on the JAX side, cast from the float64 bundle."""
    from jax_meanflow.objective import MeanFlowNoise

    noise = MeanFlowNoise(
        e=jnp.asarray(bundle.e, jdt), t=jnp.asarray(bundle.t, jdt), r=jnp.asarray(bundle.r, jdt),
        drop_mask=jnp.asarray(bundle.drop_mask),
    )
    null = arch.null_y(variant, bundle.batch_size)
    null_y = None if null is None else jnp.asarray(null, jnp.int32)
    return jnp.asarray(bundle.x, jdt), arch.jax_y(bundle, jdt), noise, null_y


def run_jax(arch: Arch, variant: Variant, params_np: dict, bundle: InputBundle, dtype: str, device: str,
            xla_compile: str = "fast") -> SideOutputs:
    jdt = _JAX_DTYPES[dtype]
    with jax.default_device(_jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=jdt), params_np)
        fn = _jax_value_and_grad(arch.name, variant.model_cfg, variant.mf_cfg, xla_compile, device)
        (_, out), grads = fn(params, *_jax_inputs(arch, variant, bundle, jdt))
    terms = {k: np.asarray(getattr(out, k), np.float64) for k in TERMS}
    grads_np = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), grads)
    return SideOutputs(terms, convert.jax_to_torch(grads_np, arch.table, variant.model_cfg))


def run_torch(arch: Arch, variant: Variant, state_dict: dict, bundle: InputBundle, dtype: str, device: str,
              control=None) -> SideOutputs:
    import torch_meanflow.objective as tobj

    tdt = _TORCH_DTYPES[dtype]
    module = arch.torch_build(variant.model_cfg).to(device=device, dtype=tdt)
    load_state_dict_strict(module, state_dict)
    if control is not None and control.model is not None:
        control.model(module)
    module.eval()  # dropout off: masks cannot match across frameworks

    def t_(a):
        return torch.as_tensor(np.asarray(a), dtype=tdt, device=device)

    x = t_(to_torch_data(arch.name, bundle.x))
    y = arch.torch_y(bundle, tdt, device)
    noise = tobj.MeanFlowNoise(
        e=t_(to_torch_data(arch.name, bundle.e)), t=t_(bundle.t), r=t_(bundle.r),
        drop_mask=torch.as_tensor(bundle.drop_mask, device=device),
    )
    null = arch.null_y(variant, bundle.batch_size)
    null_y = None if null is None else torch.as_tensor(null, dtype=torch.long, device=device)
    patch = control.objective() if control is not None and control.objective else contextlib.nullcontext()
    with patch:
        out = tobj.meanflow_loss(arch.torch_u_fn(module), x, y, noise, variant.mf_cfg, null_y=null_y, train=False)
    module.zero_grad(set_to_none=True)
    out.loss.backward()
    terms = {}
    for k in TERMS:
        a = getattr(out, k).detach().cpu().double().numpy()
        terms[k] = from_torch_data(arch.name, a)
    grads = {
        name: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu().double().numpy()
        for name, p in module.named_parameters()
    }
    return SideOutputs(terms, grads)


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict):
    """Load numpy arrays into `module`; missing, unexpected or mis-shaped keys are errors naming them."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state_dict and k in dict(module.named_parameters()))
    unexpected = sorted(k for k in state_dict if k not in own)
    if missing or unexpected:
        raise KeyError(f"state dict does not fit the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
    for k, a in state_dict.items():
        if tuple(own[k].shape) != tuple(np.shape(a)):
            raise ValueError(f"parameter {k!r}: shape {tuple(np.shape(a))} does not fit the model's {tuple(own[k].shape)}")
    tensors = {k: torch.as_tensor(np.asarray(a)).to(own[k].dtype) for k, a in state_dict.items()}
    module.load_state_dict(tensors, strict=False)


def run_variant(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                params_np: dict | None = None, control=None, xla_compile: str = "fast") -> list[CheckResult]:
    """Compare every objective term and every gradient of one variant; one result each.

    `control` (parity.core.controls.Control) injects a known bug into the torch side;
    `xla_compile` ("fast" or "full", parity.core.precision.XLA_COMPILE) how XLA:CPU compiles
    the JAX reference.
    """
    arch = get_arch(variant.arch)
    if params_np is None:
        params_np = random_params(arch, variant, seed)
    state_dict = convert.jax_to_torch(params_np, arch.table, variant.model_cfg)
    if control is not None and control.state is not None:
        state_dict = control.state(state_dict)
    bundle = arch.make_bundle(variant, batch, seed + 1)
    ref = run_jax(arch, variant, params_np, bundle, dtype, device, xla_compile)
    got = run_torch(arch, variant, state_dict, bundle, dtype, device, control)
    labels = dict(arch=arch.name, variant=variant.name, dtype=dtype, device=device)
    results = [
        compare(ref.terms[k], got.terms[k], quantity=k, tol=tolerance(dtype, device, k, arch.name), **labels)
        for k in TERMS
    ]
    grads = compare_grads(ref.grads, got.grads, tol=tolerance(dtype, device, "grad", arch.name), **labels)
    results.append(summarise_grads(grads))
    for r in results:
        r.info["per_parameter"] = None
    results[-1].info["per_parameter"] = [g.as_dict() for g in grads]
    return results


def summarise_grads(grads: list[CheckResult]) -> CheckResult:
    """The worst parameter gradient, named in `where`; passes when every parameter passes."""
    worst = max(grads, key=lambda g: g.max_rel)
    out = CheckResult(**{**worst.as_dict(), "quantity": "grad", "info": {}})
    out.where = f"{worst.quantity[5:]} {worst.where}"
    out.passed = all(g.passed for g in grads)
    out.info["n_params"] = len(grads)
    return out
