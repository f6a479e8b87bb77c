"""Negative controls: each known porting bug, injected into the torch side, fails the harness.

Run in float64 (the oracle mode, tolerance 1e-12), where any implementation difference
stands far above rounding.
"""
import pytest

from parity.core.arch import default_variants, get_arch
from parity.core.controls import NO_OP_PORTING_CHANGES
from parity.core.harness import random_params, run_variant

# Every built-in architecture's negative controls: (architecture name, control).
CONTROLS = {f"{a}:{c.name}": (a, c) for a in ("dit", "flower") for c in get_arch(a).controls}


def _variant(arch):
    return next(v for v in default_variants() if v.arch.name == arch)


@pytest.fixture(scope="module")
def params():
    return {a: random_params(get_arch(a), _variant(a), seed=0) for a in ("dit", "flower")}


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_clean_run_passes(arch, params):
    results = run_variant(_variant(arch), "float64", params_np=params[arch])
    assert all(r.passed for r in results), [r.quantity for r in results if not r.passed]


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_fails_the_harness(name, params):
    arch, control = CONTROLS[name]
    results = run_variant(_variant(arch), "float64", params_np=params[arch], control=control)
    failed = [r.quantity for r in results if not r.passed]
    assert failed, f"the harness did not see the injected bug {name!r}"


def test_dropping_the_clip_is_a_no_op_for_valid_times(params):
    """0 <= r <= t <= 1 puts t - r in [0, 1]: the clip never acts, so no harness can see it."""
    v = _variant("dit")
    clean = run_variant(v, "float64", params_np=params["dit"])
    patched = run_variant(v, "float64", params_np=params["dit"], control=NO_OP_PORTING_CHANGES["no_clip"])
    assert [(r.quantity, r.max_abs) for r in clean] == [(r.quantity, r.max_abs) for r in patched]


def test_a_control_of_another_network_is_refused(params):
    """A model or weight bug names one network's modules: applying it to another is an error."""
    with pytest.raises(ValueError, match="not one of flower's controls"):
        run_variant(_variant("flower"), "float64", params_np=params["flower"], control=get_arch("dit").control("gelu_erf"))
