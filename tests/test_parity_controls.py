"""Negative controls: each known porting bug, injected into the torch side, fails the harness.

Run in float64 (the oracle mode, tolerance 1e-12), where any implementation difference
stands far above rounding.
"""
import pytest

from parity.archs.registry import default_variants, get_arch
from parity.core.controls import NO_OP_PORTING_CHANGES
from parity.core.harness import random_params, run_variant

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

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


ALL = {"u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "grad"}
TARGET = {"du_dt", "u_tgt", "loss_per_sample", "loss", "grad"}  # u itself is right
# The exact set of quantities each control must fail (README, "Negative controls"):
# a control that fails more or fewer than these means the harness or the bug changed.
EXPECTED_FAILURES = {
    "zero_z_tangent": TARGET,
    "autograd_wrt_t": TARGET,
    "no_stop_gradient": {"grad"},
    "guidance_window_ignored": TARGET | {"v_g"},  # du/dt too: v_g is the JVP's z-tangent
    "gelu_erf": ALL,
    "layernorm_eps": ALL,
    "untransposed_conv": ALL,
    "flower_time_scale": ALL - {"v_g"},  # FLOWER has no guidance: v_g = v on both sides
}


def test_every_control_has_its_expected_failures():
    assert set(EXPECTED_FAILURES) == {c.name for _, c in CONTROLS.values()}


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_control_fails_the_harness(name, params):
    arch, control = CONTROLS[name]
    results = run_variant(_variant(arch), "float64", params_np=params[arch], control=control)
    failed = {r.quantity for r in results if not r.passed}
    assert failed == EXPECTED_FAILURES[control.name], f"{name}: failed {sorted(failed)}"


def test_dropping_the_clip_is_a_no_op_for_valid_times(params, monkeypatch):
    """0 <= r <= t <= 1 puts t - r in [0, 1]: the clip never acts, so no harness can see it.

    The patch demonstrably reaches the target's code path (every target is formed with
    clip_h=False), and the same patched function does change the target where h leaves [0, 1].
    """
    import torch

    import torch_meanflow.objective as tobj

    seen = []
    real_finish = tobj._finish

    def spy(u, du_dt, v, v_g, t, r, cfg):
        seen.append(cfg.clip_h)
        return real_finish(u, du_dt, v, v_g, t, r, cfg)

    monkeypatch.setattr(tobj, "_finish", spy)
    v = _variant("dit")
    clean = run_variant(v, "float64", params_np=params["dit"])
    assert seen == [True]
    patched = run_variant(v, "float64", params_np=params["dit"], control=NO_OP_PORTING_CHANGES["no_clip"])
    assert seen == [True, False]  # the patched run formed its target without the clip
    assert [(r.quantity, r.max_abs) for r in clean] == [(r.quantity, r.max_abs) for r in patched]

    # Outside [0, 1] (times no sampler produces) the unclipped target differs.
    g = torch.Generator().manual_seed(0)
    u, du, vv = (torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t, r = torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([-0.5, 0.25], dtype=torch.float64)
    with NO_OP_PORTING_CHANGES["no_clip"].objective():
        unclipped = tobj._finish(u, du, vv, vv, t, r, v.mf_cfg).u_tgt
    clipped = real_finish(u, du, vv, vv, t, r, v.mf_cfg).u_tgt
    assert torch.equal(unclipped[1], clipped[1]) and not torch.allclose(unclipped[0], clipped[0])


def test_a_control_of_another_network_is_refused(params):
    """A model or weight bug names one network's modules: applying it to another is an error."""
    with pytest.raises(ValueError, match="not one of flower's controls"):
        run_variant(_variant("flower"), "float64", params_np=params["flower"], control=get_arch("dit").control("gelu_erf"))


def test_the_policy_passes_and_its_encoder_bug_fails_and_is_blamed_on_the_encoder():
    """`--arch policy` compares the encoder too: a bug there fails u and everything after it,
    and the debugger blames the encoder."""
    from parity.debug import analyse, blames, prepare_case

    policy = get_arch("policy")
    v = policy.default_variants()[0]
    params = random_params(policy, v, seed=0)
    assert all(r.passed for r in run_variant(v, "float64", params_np=params))
    control = policy.control("encoder_gelu_tanh")
    failed = {r.quantity for r in run_variant(v, "float64", params_np=params, control=control) if not r.passed}
    assert {"u", "du_dt", "u_tgt", "loss", "grad"} <= failed, failed
    assert blames(analyse(prepare_case(v, "float64", params_np=params, control=control)), "encoder")
