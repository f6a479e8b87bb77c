"""improved MeanFlow and pixel MeanFlow as objectives of the harness: the honest float64 run
of each built-in pairing passes on every quantity and gradient, and each negative control (a
porting bug injected into the torch side) fails at least one compared quantity; a wrong
pairing is refused. Random weights everywhere (the Arch randomises the zero-initialised gates
and final layers: on fresh weights every block is the identity and u = 0)."""
import pytest

import parity
from parity.archs.imf_dit import IMF_DIT
from parity.archs.pmf_dit import PMF_DIT
from parity.core.harness import random_params, run_variant

pytestmark = pytest.mark.heavy  # compiles two iMF/pMF objectives with every control: make test, not test-fast

CASES = {"imf": (IMF_DIT, parity.IMF), "pmf": (PMF_DIT, parity.PMF)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    arch, objective = CASES[request.param]
    variant = arch.default_variants(objective=objective)[0]
    return objective, variant, random_params(arch, variant, seed=0)


def _failed(results) -> set:
    return {r.quantity for r in results if not r.passed}


def test_the_honest_run_passes_and_compares_every_quantity(case):
    objective, variant, params = case
    results = run_variant(variant, "float64", params_np=params)
    assert [r.quantity for r in results] == [*objective.names, "grad"]
    assert _failed(results) == set()
    u = next(r for r in results if r.quantity == "u")
    assert u.max_abs < 1e-9


def test_each_control_fails(case):
    objective, variant, params = case
    assert objective.controls, "an objective without negative controls proves nothing"
    for control in objective.controls:
        failed = _failed(run_variant(variant, "float64", params_np=params, control=control))
        assert failed, f"control {control.name} of {objective.name} passed: the check cannot see it"


def test_a_meanflow_arch_is_refused_with_the_imf_objective():
    from parity.archs.dit import DIT

    with pytest.raises((TypeError, ValueError), match="imf"):
        DIT.default_variants(objective=parity.IMF)
