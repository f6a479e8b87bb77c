"""The float32 rule calibrated by float64: its arithmetic, its verdicts on constructed
errors, and on the real networks: the honest port passes, every negative control fails."""
import numpy as np
import pytest

from parity.archs.registry import default_variants, get_arch
from parity.core.compare import compare, compare_grads
from parity.core.harness import SideOutputs, random_params, run_variant
from parity.core.rule import DEFAULT_RULE, FIXED_RULE, Float32Rule, own_errors, rel_errors

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


def test_budget_arithmetic():
    rule = Float32Rule(factor=4.0, floor=1e-7, ceiling_factor=10.0)
    assert rule.budget(1e-6, 2e-6) == pytest.approx(4e-6 + 1e-7)
    assert rule.budget(1e-3, 2e-6) == pytest.approx(2e-5 + 1e-7)  # the ceiling: 10 x fixed
    assert rule.budget(0.0, 2e-6, floor_scale=100.0) == pytest.approx(1e-5)  # floor scaled for a small leaf


@pytest.mark.parametrize("bad", [dict(kind="loose"), dict(factor=0.0), dict(floor=-1.0), dict(ceiling_factor=np.inf),
                                 dict(factor="4"), dict(rms_factor=0.0),
                                 dict(rms_min_elements=0)])
def test_bad_rule_is_refused(bad):
    with pytest.raises(ValueError, match="rule|Float32Rule"):
        Float32Rule(**bad)


L = dict(arch="a", variant="v", dtype="float32", device="cpu")


def _sides(seed=0, n=400, err=1e-6):
    """(truth, float32-like reference, its error size): reference = truth + noise of `err`."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=n)
    ref = truth + err * rng.normal(size=n)
    return truth, ref


def test_calibrated_verdicts_on_constructed_errors():
    truth, ref = _sides()
    own = rel_errors(ref, truth)
    rng = np.random.default_rng(1)
    honest = ref + 1e-6 * rng.normal(size=ref.size)  # the port's own rounding, as large as the reference's
    biased = ref * (1 + 2e-5)  # a systematic 2e-5 relative error: a porting bug
    ok = compare(truth, honest, quantity="u", tol=2e-6, own_err=own, rule=DEFAULT_RULE, **L)
    bad = compare(truth, biased, quantity="u", tol=2e-6, own_err=own, rule=DEFAULT_RULE, **L)
    assert ok.passed and not bad.passed
    assert ok.info["rule"] == "calibrated" and ok.info["fixed_tol"] == 2e-6 and ok.tol != 2e-6
    assert bad.tol == ok.tol  # the budget comes from the reference alone: a bug cannot widen it
    fixed = compare(truth, biased, quantity="u", tol=2e-6, own_err=own, rule=FIXED_RULE, **L)
    assert fixed.tol == 2e-6 and "rule" not in fixed.info


def test_rule_scales_with_the_reference_error():
    """The same port noise (sd 1.5e-5) fails next to a reference rounding of sd 1e-6 and passes
    next to one of 1e-5: the budget grows with the network's own float32 error."""
    for err, expect in ((1e-6, False), (1e-5, True)):
        truth, ref = _sides(err=err)
        own = rel_errors(ref, truth)
        got = ref + 1.5e-5 * np.random.default_rng(2).normal(size=ref.size)
        assert compare(ref, got, quantity="u", tol=2e-6, own_err=own, rule=DEFAULT_RULE, **L).passed is expect


def test_rms_criterion_sees_a_systematic_error_under_the_max():
    """A constant offset (say a wrong bias) whose max stays within factor x the reference's
    max rounding (heavy-tailed) but whose rms is several times its rms fails on the rms
    criterion alone."""
    truth, ref = _sides(err=1e-6, n=4000)
    own = rel_errors(ref, truth)
    got = ref + 2.0 * own[0] * np.max(np.abs(ref))  # 2 x own max everywhere: inside the max budget (4 x)
    res = compare(ref, got, quantity="u", tol=2e-6, own_err=own, rule=DEFAULT_RULE, **L)
    assert res.max_rel <= res.tol and not res.passed and not res.info["rms_passed"]
    assert "rms" in res.where and res.budget_used > 1


def test_nearly_zero_gradient_leaf_is_judged_against_the_gradient_scale():
    """A leaf whose gradient is ~1e-6 of the largest one is float32 noise relative to its own
    magnitude: the fixed rule fails it, the calibrated one passes it; a real error on the
    large leaf still fails."""
    rng = np.random.default_rng(0)
    big = rng.normal(size=(64, 64))
    tiny = 1e-6 * rng.normal(size=(8,))
    truth = SideOutputs({}, {"big": big, "tiny": tiny})
    ref = SideOutputs({}, {"big": big + 1e-7 * rng.normal(size=big.shape), "tiny": tiny + 1e-11 * rng.normal(size=8)})
    own = own_errors(ref, truth)
    assert own.grad_floor_scale["tiny"] > 1e5 and own.grad_floor_scale["big"] == 1.0
    got = {"big": ref.grads["big"] + 1e-7 * rng.normal(size=big.shape),
           "tiny": ref.grads["tiny"] + 5e-11 * rng.normal(size=8)}
    cal = {r.quantity: r for r in compare_grads(ref.grads, got, tol=1e-5, own=own, rule=DEFAULT_RULE, **L)}
    fix = {r.quantity: r for r in compare_grads(ref.grads, got, tol=1e-5, **L)}
    assert not fix["grad:tiny"].passed and cal["grad:tiny"].passed and cal["grad:big"].passed
    got["big"] = got["big"] * (1 + 1e-4)
    assert not {r.quantity: r for r in compare_grads(ref.grads, got, tol=1e-5, own=own,
                                                      rule=DEFAULT_RULE, **L)}["grad:big"].passed


def _variant(arch):
    return next(v for v in default_variants() if v.arch.name == arch)


@pytest.fixture(scope="module")
def params():
    return {a: random_params(get_arch(a), _variant(a), seed=0) for a in ("dit", "flower")}


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_honest_port_passes_calibrated_float32(arch, params):
    results = run_variant(_variant(arch), "float32", params_np=params[arch])
    assert all(r.passed for r in results), [(r.quantity, r.max_rel, r.tol) for r in results if not r.passed]
    assert all(r.info.get("rule") == "calibrated" for r in results)
    assert all(r.info["own_err"] > 0 for r in results if r.quantity in ("u", "du_dt", "grad"))


def _controls(arch):
    """{name: control} of every control that applies to the first variant at the suite's
    batch 6 (the selection `python -m parity rule-sizes` makes)."""
    from parity.bench.rule_sizes import _controls as applicable

    chosen, skipped = applicable(_variant(arch), 6)
    assert not skipped
    return {c.name: c for c in chosen}


CASES = [(a, n) for a in ("dit", "flower") for n in sorted(_controls(a))]


@pytest.mark.parametrize("arch,name", CASES, ids=[f"{a}:{n}" for a, n in CASES])
def test_every_control_fails_calibrated_float32(arch, name, params):
    results = run_variant(_variant(arch), "float32", params_np=params[arch], control=_controls(arch)[name])
    failed = [r for r in results if not r.passed]
    assert failed, f"{arch}:{name} passed the calibrated float32 rule"
    worst = max(failed, key=lambda r: r.max_rel / r.tol)
    assert worst.max_rel > 3 * worst.tol, f"{arch}:{name}: fails by a margin of only {worst.max_rel / worst.tol:.2f}"


@pytest.mark.parametrize("batch", [3, 4, 6])
def test_small_batches_reach_both_sides_of_the_guidance_window(batch):
    """The window control can only fail where a kept sample lies inside the window and one
    outside: every seed's bundle must have both, down to batch 3 (the size sweep's batch)."""
    v = _variant("dit")
    assert v.mf_cfg.guidance_eq and v.mf_cfg.t_start > 0
    for seed in range(40):
        b = v.arch.make_bundle(v, batch, seed)
        kept = ~b.drop_mask
        inside = (b.t >= v.mf_cfg.t_start) & (b.t <= v.mf_cfg.t_end)
        assert b.drop_mask.any() and (kept & inside).any() and (kept & ~inside).any(), (seed, b.t, b.drop_mask)


def test_rule_sizes_command_measures_and_combines(tmp_path):
    """`python -m parity rule-sizes`: one size with its controls, then --combine into a table and a plot."""
    from parity.bench.rule_sizes import main

    a = tmp_path / "a.json"
    assert main(["--sizes", "flower:tiny", "--json", str(a)]) == 0
    import json

    size = json.loads(a.read_text())["sizes"][0]
    assert size["n_params"] > 0 and all(r["passed"] for r in size["honest"])
    assert {c["name"] for c in size["controls"]} == {"zero_z_tangent", "autograd_wrt_t", "no_stop_gradient",
                                                     "flower_time_scale"}
    assert all(c["failed"] and c["margin"] > 1 for c in size["controls"])
    md, png = tmp_path / "t.md", tmp_path / "t.png"
    assert main(["--combine", f"{a},{a}", "--markdown", str(md), "--plot", str(png)]) == 0
    assert md.read_text().count("| flower tiny | 0.1 M | u |") == 2 and png.stat().st_size > 10_000
