"""The objective as a plug-in: the sCM example of examples/scm (an objective from outside the
MeanFlow family) through the API, the pytest plugin, the debugger and the command line; its
broken twin and each of its negative controls fail with the right blame; MeanFlow and sCM run
through one harness call, which looks at neither name; a wrong Arch/objective pairing is
refused with a message naming both.

Float64 (the oracle mode: rounding ~1e-15, a bug ~1e-1) on the tiny conv_velocity network.
"""
import numpy as np
import pytest

import parity
from examples.conv_velocity import ARCH as CONV_VELOCITY
from examples.scm import ARCH, BROKEN, CONTROLS, SCM, SCMConfig
from examples.scm.objective import sampler_checks
from meanflow_common.config import MeanFlowConfig
from parity.cli import main
from parity.core.harness import random_params, run_variant
from parity.suite.run import run_suite

FIRST = ARCH.default_variants(objective=SCM)[0]  # "scm": consistency training, tangent cos(t) z - sin(t) x0

# The quantities each control must fail (more or fewer means the harness or the bug changed).
EXPECTED_FAILURES = {
    "tangent_sin_sign": {"dxt_dt", "dF_dt", "g", "loss_per_sample", "loss", "grad"},
    "no_tangent_normalisation": {"g", "loss_per_sample", "loss", "grad"},
    "no_stop_gradient": {"grad"},  # every value agrees: only the gradient flows where it must not
}


@pytest.fixture(scope="module")
def params():
    return random_params(ARCH, FIRST, seed=0)


def _failed(results) -> set:
    return {r.quantity for r in results if not r.passed}


def test_every_control_is_tested():
    assert set(EXPECTED_FAILURES) == {c.name for c in SCM.controls} == {c.name for c in CONTROLS}
    assert all(c.for_objective == "scm" for c in SCM.controls)


@pytest.mark.parametrize("control", [None, *CONTROLS], ids=lambda c: "honest" if c is None else c.name)
def test_each_control_fails_and_the_honest_run_passes(control, params):
    results = run_variant(FIRST, "float64", params_np=params, control=control)
    assert [r.quantity for r in results] == [*SCM.names, "grad"]
    assert _failed(results) == (set() if control is None else EXPECTED_FAILURES[control.name])


def test_a_control_of_another_objective_is_refused(params):
    zero_tangent = parity.MEANFLOW.control("zero_z_tangent")
    with pytest.raises(ValueError, match="patches the torch implementation of objective meanflow"):
        run_variant(FIRST, "float64", params_np=params, control=zero_tangent)


def test_broken_twin_fails_and_is_blamed_on_the_objective_tangent():
    """The debugger (the blame of every failing report): the network agrees module by module
    at identical inputs, so the objective is blamed, at its first failing term dx_t/dt."""
    from parity.debug import blames, run_debug

    variant = ARCH.default_variants(objective=BROKEN)[0]
    result = run_debug(variant, "float64")
    assert blames(result, "") and not any(m.over for m in result.modules) and len(result.modules) > 5
    assert result.diagnosis.startswith("network agrees layer by layer; divergence in the objective: dxt_dt")
    assert {r.quantity for r in result.objective if not r.passed} == EXPECTED_FAILURES["tangent_sin_sign"]
    command = parity.ParityReport([], [variant]).debug_command(variant, "float64", "cpu")
    assert "--objective examples.scm" in command and "--arch examples.scm" in command, command


def test_two_objectives_through_one_harness_call():
    """MeanFlow on conv_velocity and sCM on its adapter in one suite run: each variant compared
    on its own objective's quantities, both samplers checks reported, all passing."""
    from parity.checks.samplers import objectives_of

    variants = [CONV_VELOCITY.default_variants()[1], FIRST]  # MeanFlow "no cfg", sCM "scm"
    assert objectives_of(variants) == [parity.MEANFLOW, SCM]  # whose samplers checks the report runs
    results, _ = run_suite(variants, ["float64"], ["cpu"], checks=("branches",))
    assert all(r.passed for r in results), [(r.variant, r.quantity) for r in results if not r.passed]
    by_variant = {}
    for r in results:
        by_variant.setdefault((r.arch, r.variant), []).append(r.quantity)
    assert by_variant[("conv_velocity", "no cfg")] == [*parity.MEANFLOW.names, "grad", "branches"]
    assert by_variant[("conv_velocity_scm", "scm")] == [*SCM.names, "grad", "branches"]


def test_a_wrong_pairing_is_refused_naming_both(capsys):
    with pytest.raises(parity.ObjectiveMismatch, match=r"objective scm calls the network as F_fn\(x, t, y, train\)"
                       r".*Arch conv_velocity does not provide.*u_fn\(z, t, h, y, train\)"):
        parity.check(CONV_VELOCITY, objective=SCM)
    with pytest.raises(TypeError, match="objective scm needs a SCMConfig config, got MeanFlowConfig"):
        parity.Variant(ARCH, "mixed up", ARCH.preset(), MeanFlowConfig(), SCM)
    code = main(["--arch", "examples.conv_velocity:ARCH", "--objective", "examples.scm:SCM"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Arch conv_velocity does not provide" in err[0], err
    with pytest.raises(KeyError, match="unknown objective 'nope'; registered: imf, meanflow, pmf"):
        parity.get_objective("nope")


@pytest.mark.heavy
def test_pytest_plugin_takes_the_objective(parity_check):
    report = parity_check(ARCH, objective="examples.scm:SCM", dtypes=("float64",), checks="none",
                          preset="tiny")
    assert {r.variant for r in report.results} == {"scm", "scm warmup 0.5, own velocity"}
    with pytest.raises(parity.ParityError, match="blamed: objective"):
        parity_check([ARCH.default_variants(objective=BROKEN)[0]], dtypes=("float64",), checks="none")


def test_samplers_pass_and_catch_a_broken_sampler():
    assert all(r.passed for r in sampler_checks(n=4000))

    def uniform_t(cfg, n, seed):  # t ~ U(0, pi/2) instead of arctan(exp(tau) / sigma_d)
        rng = np.random.default_rng(seed)
        return {"z": rng.standard_normal((n, 2)), "t": rng.uniform(0, np.pi / 2, n)}

    failed = {r.quantity for r in sampler_checks(n=4000, draw_torch=uniform_t) if not r.passed}
    assert failed == {"torch t KS", "t KS cross"}


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="SCMConfig.tangent must be one of"):
        SCMConfig(tangent="v")
    with pytest.raises(ValueError, match="SCMConfig.warmup must lie in"):
        SCMConfig(warmup=2.0)


@pytest.mark.heavy
def test_command_line_and_debugger(capsys, tmp_path):
    """`python -m parity --arch examples.scm:ARCH --objective examples.scm:SCM` with every check
    (x64-off in a child process, which imports the objective again) and trained weights;
    `python -m parity debug` on the broken twin blames the objective."""
    code = main(["--arch", "examples.scm:ARCH", "--objective", "examples.scm:SCM", "--dtype", "float32,float64",
                 "--trained-steps", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "passed, 0 failed" in out, out[-3000:]
    assert "scm x64 off" in out and "scm trained2" in out and "scm default" in out
    code = main(["debug", "--arch", "examples.scm:ARCH", "--objective", "examples.scm:BROKEN", "--variant", "scm",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1 and "divergence in the objective: dxt_dt" in out, out[-3000:]
