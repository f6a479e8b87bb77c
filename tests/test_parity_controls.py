"""Negative controls: each known porting bug, injected into the torch side, fails the harness.

Run in float64 (the oracle mode, tolerance 1e-12), where any implementation difference
stands far above rounding.
"""
import pytest

from parity.core.arch import default_variants
from parity.core.controls import CONTROLS, NO_OP_PORTING_CHANGES
from parity.core.harness import random_params, run_variant
from parity.core.arch import get_arch


def _variant(arch):
    return next(v for v in default_variants() if v.arch == arch)


@pytest.fixture(scope="module")
def params():
    return {a: random_params(get_arch(a), _variant(a), seed=0) for a in ("dit", "flower")}


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_clean_run_passes(arch, params):
    results = run_variant(_variant(arch), "float64", params_np=params[arch])
    assert all(r.passed for r in results), [r.quantity for r in results if not r.passed]


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_fails_the_harness(name, params):
    control = CONTROLS[name]
    results = run_variant(_variant(control.arch), "float64", params_np=params[control.arch], control=control)
    failed = [r.quantity for r in results if not r.passed]
    assert failed, f"the harness did not see the injected bug {name!r}"


def test_dropping_the_clip_is_a_no_op_for_valid_times(params):
    """0 <= r <= t <= 1 puts t - r in [0, 1]: the clip never acts, so no harness can see it."""
    v = _variant("dit")
    clean = run_variant(v, "float64", params_np=params["dit"])
    patched = run_variant(v, "float64", params_np=params["dit"], control=NO_OP_PORTING_CHANGES["no_clip"])
    assert [(r.quantity, r.max_abs) for r in clean] == [(r.quantity, r.max_abs) for r in patched]
