"""The divergence debugger inside the iMF and pMF networks: an honest float64 run is clean
module by module (the [B, N, heads, head_dim] q / k norms are compared as they are, not moved
like images), a bug in one torch block is blamed on it, and an objective bug on the objective."""
import pytest
import torch

from parity.archs.registry import select_variants
from parity.core.controls import Control
from parity.core.harness import random_params
from parity.core.precision import pinned_precision
from parity.debug import OBJECTIVE, analyse, blames, prepare_case

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


@pytest.fixture(scope="module", params=[("imf-dit", "imf"), ("pmf-dit", "pmf")], ids=["imf", "pmf"])
def setup(request):
    arch, objective = request.param
    with pinned_precision(True):
        variant = select_variants(arch, objective=objective)[0]
        yield variant, random_params(variant.arch, variant, seed=0)


def _scale_k_norm(module):
    with torch.no_grad():
        module.shared_blocks[1].attn.k_norm.weight.mul_(1.001)


def test_honest_run_is_clean(setup):
    variant, params = setup
    res = analyse(prepare_case(variant, "float64", params_np=params))
    assert res.blamed == "" and not any(m.over for m in res.modules), res.diagnosis
    names = [m.name for m in res.modules]
    assert "shared_blocks.0.attn.q_norm" in names and "u_heads.0.attn.k_norm" in names


def test_a_block_bug_is_blamed_on_its_module(setup):
    variant, params = setup
    if variant.objective.name != "imf":
        pytest.skip("one network bug suffices: the pMF network shares the iMF blocks")
    bug = Control("k_norm", "second block's k-norm scale off by 1e-3", model=_scale_k_norm)
    res = analyse(prepare_case(variant, "float64", params_np=params, control=bug))
    assert res.first_over == "shared_blocks.1.attn.k_norm" and blames(res, "shared_blocks.1.attn.k_norm"), \
        (res.blamed, res.diagnosis)


def test_an_objective_bug_is_blamed_on_the_objective(setup):
    variant, params = setup
    if variant.objective.name != "pmf":
        pytest.skip("one objective bug suffices: pMF's objective runs iMF's guided terms")
    control = next(c for c in variant.objective.controls if "tangent" in c.name)
    res = analyse(prepare_case(variant, "float64", params_np=params, control=control))
    assert res.blamed == OBJECTIVE and not any(m.over for m in res.modules), res.diagnosis
