"""Ports that are wrong in ways a comparison must not miss or garble: a network returning u
of another shape (named before the JVP, side and shapes), and a port producing NaN or inf
(every affected quantity fails, under both float32 rules and in float64).

The tiny one-channel GroupNorm example in float64 (rounding ~1e-15) with no extra checks.
"""
import dataclasses

import numpy as np
import pytest

import parity
from examples.groupnorm_film import ARCH
from parity.cli import main
from parity.core.compare import compare
from parity.core.harness import TERMS


def _torch_u_fn_returning(change):
    def torch_u_fn(module):
        from examples.groupnorm_film.torch_net import make_u_fn

        u_fn = make_u_fn(module)
        return lambda z, t, h, y, train=False: change(u_fn(z, t, h, y))

    return torch_u_fn


def _jax_u_fn_returning(change):
    def jax_u_fn(module, params, dropout_rng=None):
        from examples.groupnorm_film.flax_net import make_u_fn

        u_fn = make_u_fn(module, params)
        return lambda z, t, h, y, train=False: change(u_fn(z, t, h, y))

    return jax_u_fn


# Module level: `--arch test_parity_bad_ports:NAME` finds them.
TORCH_WIDE = dataclasses.replace(ARCH, name="torch_wide", torch_u_fn=_torch_u_fn_returning(lambda u: u.repeat(1, 8, 1, 1)))
TORCH_NHWC = dataclasses.replace(ARCH, name="torch_nhwc", torch_u_fn=_torch_u_fn_returning(lambda u: u.permute(0, 2, 3, 1)))
JAX_FLAT = dataclasses.replace(ARCH, name="jax_flat", jax_u_fn=_jax_u_fn_returning(lambda u: u.reshape(u.shape[0], -1)))


@pytest.mark.parametrize("arch, side, got, want, hint", [
    (TORCH_WIDE, "torch", "(6, 8, 8, 8)", "(6, 1, 8, 8)", False),
    (TORCH_NHWC, "torch", "(6, 8, 8, 1)", "(6, 1, 8, 8)", True),
    (JAX_FLAT, "JAX", "(6, 64)", "(6, 8, 8, 1)", False),
])
def test_a_network_returning_the_wrong_shape_is_named(arch, side, got, want, hint):
    with pytest.raises(ValueError) as err:
        parity.check(arch, dtypes=("float64",), checks="none")
    msg = str(err.value)
    assert f"the {side} network returned u of shape {got} for z of shape {want}" in msg, msg
    assert ("a permutation of z's" in msg and "NHWC <-> NCHW" in msg) == hint, msg


def test_the_command_line_exits_2_on_a_wrong_shape(capsys):
    code = main(["--arch", "test_parity_bad_ports:TORCH_WIDE", "--dtype", "float64", "--checks", "none",
                 "--trained-steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "the torch network returned u of shape (6, 8, 8, 8)" in err and "Traceback" not in err


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("rule", ["calibrated", "fixed"])
def test_compare_fails_non_finite_values_on_either_side(value, rule):
    ref = np.linspace(1.0, 2.0, 12).reshape(3, 4)
    bad = ref.copy()
    bad[1, 2] = value
    fr = parity.Float32Rule(rule)
    for a, b, side in ((ref, bad, "port"), (bad, ref, "reference"), (bad, bad, "port")):
        r = compare(a, b, quantity="u", tol=1e-5, own_err=(1e-7, 1e-8), rule=fr, arch="a", variant="v",
                    dtype="float32", device="cpu")
        assert not r.passed and r.max_rel == np.inf and r.budget_used == np.inf
        assert f"non-finite values in the {side}" in r.where and "first at (1, 2)" in r.where, r.where
        if rule == "calibrated":
            assert r.info["fixed_passed"] is False  # the fixed table's verdict beside the rule's


def _poison(value):
    def model(module):
        module.conv_out.register_forward_hook(lambda mod, args, out: out * value)

    return parity.Control(f"u times {value}", "the port's output is non-finite", model=model)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_port_producing_nan_or_inf_fails_every_quantity(value):
    """u, du/dt, the target, the losses and the gradients all follow from a non-finite u."""
    for dtype, rule in (("float64", "calibrated"), ("float32", "calibrated"), ("float32", "fixed")):
        report = parity.check(ARCH.default_variants()[1], dtypes=(dtype,), checks="none", control=_poison(value),
                              rule=parity.Float32Rule(rule))
        verdicts = {r.quantity: r.passed for r in report.results}
        failing = {"u", "du_dt", "u_tgt", "loss_per_sample", "loss", "grad"}
        assert set(verdicts) == set(TERMS) | {"grad"}
        assert not any(verdicts[q] for q in failing), (dtype, rule, verdicts)
        assert all("non-finite" in r.where for r in report.results if r.quantity in failing - {"grad"})
