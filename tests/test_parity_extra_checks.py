"""The parity report's checks beyond the objective comparison: branch coverage of the bundles,
dropout rates at train=False, the float32 run with x64 off, and `--checks` parsing."""
import dataclasses

import numpy as np
import pytest

from parity.archs.registry import default_variants, get_arch
from parity.checks.branches import branches, coverage_check
from parity.checks.registry import parse_groups
from parity.core.inputs import cover_guidance_window, drop_mask_numpy, sample_tr_numpy

VARIANTS = {f"{v.arch}:{v.name}": v for v in default_variants()}


def _bundle(key, batch=6, seed=1):
    v = VARIANTS[key]
    return v, get_arch(v.arch).make_bundle(v, batch, seed)


@pytest.mark.parametrize("key", sorted(VARIANTS))
@pytest.mark.parametrize("seed", [1, 2, 8])
def test_default_bundles_reach_every_branch(key, seed):
    v, bundle = _bundle(key, seed=seed)
    result = coverage_check(v, bundle)
    assert result.passed, result.where
    want = {"r = t", "r < t"}
    if v.mf_cfg.class_dropout_prob > 0:
        want |= {"dropped", "kept"}
    if v.mf_cfg.guidance_eq:
        want |= {"kept, t in window", "kept, t outside window"}  # both DiT CFG variants have a window
    assert set(result.info["samples_per_branch"]) == want


def test_a_missing_branch_fails_and_is_named():
    v, bundle = _bundle("dit:cfg kappa=0")
    kept = ~bundle.drop_mask
    t = np.where(kept, 0.5, bundle.t)  # every kept sample inside [0, 0.8]
    r = np.minimum(bundle.r, t)
    result = coverage_check(v, dataclasses.replace(bundle, t=t, r=r))
    assert not result.passed and result.where == "unreached: kept, t outside window"
    all_tied = dataclasses.replace(bundle, r=bundle.t)
    assert coverage_check(v, all_tied).where.startswith("unreached: r < t")


def test_without_the_window_cover_a_branch_would_go_unreached():
    """The kappa = 0 variant's raw draw (seed 1) puts every KEPT sample inside [0, 0.8]; the
    only sample outside is a dropped one, whose v_g is v whatever the window says."""
    v = VARIANTS["dit:cfg kappa=0"]
    rng = np.random.default_rng(1)
    cfg = v.model_cfg
    shape = (6, cfg.input_size, cfg.input_size, cfg.in_channels)
    rng.standard_normal(shape), rng.integers(0, cfg.num_classes, size=6), rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, 6, v.mf_cfg)
    drop = drop_mask_numpy(rng, 6, v.mf_cfg.class_dropout_prob)
    raw = dataclasses.replace(_bundle("dit:cfg kappa=0")[1], t=t, r=r, drop_mask=drop)
    assert branches(raw, v.mf_cfg)["kept, t outside window"] == 0
    t2, r2 = cover_guidance_window(t, r, drop, v.mf_cfg)
    covered = dataclasses.replace(raw, t=t2, r=r2)
    assert branches(covered, v.mf_cfg)["kept, t outside window"] == 1
    assert np.array_equal(t2 == r2, t == r) and np.all(r2 <= t2)  # ties and order kept
    assert np.count_nonzero(t2 != t) == 1


def test_dropout_rates_at_eval_equal_zero_rates_and_a_port_ignoring_train_fails(monkeypatch):
    from parity.checks.dropout import dropout_eval_checks

    v = VARIANTS["flower:adaln rope"]
    results = dropout_eval_checks(v, "float64")
    assert len(results) == 14 and all(r.passed for r in results)
    assert {r.variant for r in results} == {"p>0 eval jax", "p>0 eval torch"}

    import torch_meanflow.flower as tflower

    def follows_module_mode(model):  # a port whose dropout follows module.training, not `train`
        return lambda z, t, h, y, train=False: model(z, t, h, y, train=model.training)

    monkeypatch.setattr(tflower, "make_u_fn", follows_module_mode)
    failed = {(r.variant, r.quantity) for r in dropout_eval_checks(v, "float64") if not r.passed}
    assert failed == {("p>0 eval torch", q) for q in ("u", "du_dt", "u_tgt", "loss_per_sample", "loss", "grad")}


@pytest.mark.heavy
def test_float32_with_x64_off_in_a_subprocess():
    from parity.checks.x64_off import x64_off_checks

    results = x64_off_checks([VARIANTS["dit:no cfg"]])
    assert len(results) == 7 and all(r.passed for r in results), [r for r in results if not r.passed]
    assert all(r.dtype == "float32" and r.variant == "no cfg x64 off" for r in results)


def test_check_groups_parse():
    assert parse_groups("all") == ("branches", "samplers", "dropout", "x64off")  # "mixed" is informational
    assert parse_groups("none") == () and parse_groups("samplers") == ("samplers",)
    assert parse_groups("all,mixed") == ("branches", "samplers", "dropout", "x64off", "mixed")
    with pytest.raises(ValueError, match=r"--checks: unknown group 'bogus'"):
        parse_groups("samplers,bogus")


def test_the_command_line_and_the_api_share_one_default():
    import inspect

    import parity
    from parity.checks.registry import DEFAULT_CHECKS
    from parity.suite.command import build_parser

    assert build_parser().parse_args([]).checks == DEFAULT_CHECKS
    assert inspect.signature(parity.check).parameters["checks"].default == DEFAULT_CHECKS


@pytest.mark.heavy
def test_a_check_object_of_ones_own_is_driven_through_the_run_and_closed_on_failure():
    import parity
    from parity.checks.base import Check
    from parity.core.compare import CheckResult

    class Recorder(Check):
        name = "recorder"

        def __init__(self, fail=False):
            self.calls, self.fail = [], fail

        def prepare(self, variants, ctx):
            super().prepare(variants, ctx)
            self.calls.append(("prepare", len(variants), ctx.batch))

        def check(self, variant, dtype, device, sides):
            self.calls.append(("check", variant.name, dtype, sides.jax is None, sides.torch is not None))
            if self.fail:
                raise RuntimeError("planted")
            return []

        def finish(self):
            self.calls.append(("finish",))
            return [CheckResult("dit", "recorder", "-", "-", "mine", 0.0, 0.0, 0.0, False, "own row")]

        def close(self):
            self.calls.append(("close",))

    v = VARIANTS["dit:no cfg"]
    rec = Recorder()
    report = parity.check(v, dtypes=("float64",), checks=[rec], batch=4)
    assert rec.calls == [("prepare", 1, 4), ("check", "no cfg", "float64", True, True), ("finish",), ("close",)]
    assert not report.passed and [r.quantity for r in report.failures] == ["mine"]  # its own row decides too
    bad = Recorder(fail=True)
    with pytest.raises(RuntimeError, match="planted"):
        parity.check(v, dtypes=("float64",), checks=[bad], batch=4)
    assert bad.calls[-1] == ("close",)


@pytest.mark.heavy
def test_a_sampler_bug_in_one_port_fails_python_m_parity(monkeypatch, capsys):
    """End to end: a torch v1 sampler whose t is not its own draw (here: pushed up on the
    r < t samples, as the old t = max(t, r) order did) makes the report exit 1."""
    import torch

    import torch_meanflow.objective as tobj
    from parity.cli import main

    args = ["--arch", "dit", "--variant", "no cfg", "--dtype", "float64", "--trained-steps", "0",
            "--checks", "samplers"]
    assert main(args) == 0
    real = tobj.sample_tr

    def inflated_t(batch_size, cfg, generator=None, device=None, dtype=torch.float32):
        t, r = real(batch_size, cfg, generator=generator, device=device, dtype=dtype)
        if cfg.rt_mask == "random" and cfg.tr_sampler == "v1":
            g = torch.Generator().manual_seed(0)
            a, b = torch.rand(batch_size, generator=g, dtype=dtype), torch.rand(batch_size, generator=g, dtype=dtype)
            t = torch.where(t == r, t, torch.maximum(t, torch.maximum(a, b)))
        return t, r

    monkeypatch.setattr(tobj, "sample_tr", inflated_t)
    assert main(args) == 1
    assert "FAIL" in capsys.readouterr().out


def test_unknown_check_group_is_exit_2(capsys):
    from parity.cli import main

    assert main(["--arch", "dit", "--checks", "bogus"]) == 2
    assert "--checks: unknown group 'bogus'" in capsys.readouterr().err
