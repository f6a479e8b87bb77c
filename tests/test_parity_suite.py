"""The parity suite as tests: the CPU tier runs in CI, the GPU tier carries the `gpu` marker.

float64 (the oracle mode) runs every default variant; float32 runs one variant per
architecture and head placement on CPU (compiling each JAX loss costs seconds on 2 cores;
`make parity` runs the full matrix).
"""
import pytest

from parity.archs.registry import default_variants
from parity.core.harness import run_variant

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

VARIANTS = {f"{v.arch}:{v.name}": v for v in default_variants()}
F32_CPU = ["dit:cfg kappa>0", "flower:adaln rope", "flower:decoder learned"]


def _assert_all_pass(results):
    failed = [f"{r.quantity} rel {r.max_rel:.2e} > {r.tol:.0e} at {r.where}" for r in results if not r.passed]
    assert not failed, failed
    quantities = {r.quantity for r in results}
    assert {"u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "grad"} <= quantities


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_float64_cpu(key):
    _assert_all_pass(run_variant(VARIANTS[key], "float64", "cpu"))


@pytest.mark.parametrize("key", F32_CPU)
def test_float32_cpu(key):
    _assert_all_pass(run_variant(VARIANTS[key], "float32", "cpu"))


def test_batch_not_power_of_two_and_other_seed():
    results = run_variant(VARIANTS["dit:cfg kappa>0"], "float64", "cpu", seed=5, batch=7)
    _assert_all_pass(results)


def test_checks_are_not_vacuous():
    """The compared quantities are far from zero: random weights, both r = t and r < t samples."""
    from parity.archs.registry import get_arch
    from parity.core.harness import random_params, run_jax

    v = VARIANTS["dit:cfg kappa>0"]
    arch = get_arch("dit")
    bundle = arch.make_bundle(v, 6, 1)
    assert (bundle.t == bundle.r).any() and (bundle.t > bundle.r).any()
    assert bundle.drop_mask.any() and not bundle.drop_mask.all()
    out = run_jax(arch, v, random_params(arch, v, 0), bundle, "float64", "cpu")
    for k in ("u", "du_dt", "u_tgt"):
        assert abs(out.terms[k]).max() > 1e-2, k
    assert sum(abs(g).max() > 0 for g in out.grads.values()) == len(out.grads)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_gpu(key, dtype):
    from parity.core.precision import pinned_precision

    with pinned_precision(True):
        _assert_all_pass(run_variant(VARIANTS[key], dtype, "cuda"))


@pytest.mark.parametrize("key", ["dit:cfg kappa>0", "flower:adaln rope"])
def test_after_training_steps(key):
    """Parity at trained weights too (zero-initialised layers moved off zero by AdamW)."""
    from parity.archs.registry import get_arch
    from parity.core.harness import trained_params

    v = VARIANTS[key]
    params = trained_params(get_arch(v.arch), v, seed=0, steps=8)
    _assert_all_pass(run_variant(v, "float64", "cpu", params_np=params))


def test_fast_xla_compile_changes_rounding_only():
    """The suite's default XLA:CPU "fast" compile (LLVM -O0) computes the same reference as
    the optimised executable the trainer runs: float64 terms and gradients agree to rounding,
    and differ (the two modes really are two executables)."""
    import numpy as np

    from parity.archs.registry import get_arch
    from parity.core.harness import random_params, run_jax

    v = VARIANTS["flower:decoder rope"]
    arch = get_arch("flower")
    params, bundle = random_params(arch, v, 0), arch.make_bundle(v, 6, 1)
    fast = run_jax(arch, v, params, bundle, "float64", "cpu", "fast")
    full = run_jax(arch, v, params, bundle, "float64", "cpu", "full")
    pairs = [(fast.terms[k], full.terms[k]) for k in fast.terms] + [(fast.grads[k], full.grads[k]) for k in fast.grads]
    worst = max(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300) for a, b in pairs)
    assert worst < 1e-13, worst
    assert any(not np.array_equal(a, b) for a, b in pairs)


def test_unknown_xla_compile_mode_is_an_error():
    from parity.core.precision import jax_compiler_options

    with pytest.raises(ValueError, match="unknown XLA compile mode 'quick'"):
        jax_compiler_options("quick", "cpu")
    assert jax_compiler_options("fast", "cuda") is None
