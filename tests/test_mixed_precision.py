"""The bf16-mixed rows of the precision matrix on the tiny FLOWER network (random weights):
float32 weights with bfloat16 matmuls really compute in bfloat16 (errors far above float32's),
keep the time embedding in float32 (errors far below pure bfloat16's ~70% in u), and the row
with autocast off around the JVP computes what float32 JAX computes."""
import numpy as np
import pytest

from parity.archs.registry import default_variants, get_arch
from parity.core.harness import random_params
from parity.core.precision import pinned_precision
from parity.debug import prepare_case
from parity.debug.mixed import jax_mixed_u_du, mixed_rows
from parity.debug.modes import _rel, jax_u_du

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


@pytest.fixture(scope="module")
def rows():
    variant = next(v for v in default_variants() if v.arch.name == "flower")
    with pinned_precision(True):
        case = prepare_case(variant, "float64", params_np=random_params(get_arch("flower"), variant, seed=0))
        ref = jax_u_du(case, "float64")
        f32 = jax_u_du(case, "float32")
        out = {(r["setting"], r["backend"]): r for r in mixed_rows(case, *ref, f32, _rel)}
    return case, ref, out


def test_bf16_mixed_computes_in_bf16_with_a_float32_time_embedding(rows):
    _, _, out = rows
    for key in (("bf16-mixed", "jax"), ("bf16-mixed", "torch")):
        r = out[key]
        # > 1e-3: bfloat16 was used (float32 sits at 1e-5); < 0.1: the x1000 time frequencies
        # stayed in float32 (in bfloat16 they put u 70% off)
        assert 1e-3 < r["u_rel"] < 0.1 and 1e-3 < r["du_dt_rel"] < 0.1, (key, r)
    assert out[("bf16-mixed", "torch")]["u_rel_vs_jax"] < 0.1


def test_autocast_off_around_the_jvp_is_float32(rows):
    r = rows[2][("bf16-mixed, fp32 JVP", "torch")]
    assert r["u_rel_vs_jax"] < 2e-6 and r["du_dt_rel_vs_jax"] < 1e-5, r
    assert r["u_rel"] < 1e-4


def test_flax_mixed_without_the_interceptor_is_float32(rows, monkeypatch):
    """Negative control: with the layer interceptor made a no-op the Flax row computes float32,
    and the bf16 bound above would fail."""
    import parity.debug.mixed as mixed

    case, (ref_u, _), _ = rows
    monkeypatch.setattr(mixed, "_bf16_layers", lambda f, a, k, c: f(*a, **k))
    u, _ = jax_mixed_u_du(case.arch, case.variant, case.params_np, case.inputs)
    assert _rel(ref_u, u) < 1e-4


def test_report_rows_are_informational_and_never_fail():
    """`python -m parity --mixed`: the bf16-mixed rows exceed the float32 tolerance (bf16 is
    used) yet never fail the report, and the table marks them as reported only."""
    from parity.core.report import format_table
    from parity.checks.mixed import mixed_checks

    variant = next(v for v in default_variants() if v.arch.name == "flower" and v.name == "adaln rope")
    with pinned_precision(True):
        rows = mixed_checks([variant], "cpu", seed=0, batch=2)
    assert [(r.quantity, r.where.split(",")[0]) for r in rows] == [
        ("u", "JVP in autocast"), ("du_dt", "JVP in autocast"), ("u", "JVP fp32"), ("du_dt", "JVP fp32")]
    assert all(r.passed and r.info["informational"] for r in rows)
    assert rows[0].max_rel > 1e2 * rows[0].tol  # bf16 in use: far over the float32 budget, still not failed
    assert rows[2].max_rel < rows[2].tol  # the float32 JVP matches JAX float32 within the float32 budget
    table = format_table(rows)
    assert "FAIL" not in table and "0 passed, 0 failed, 4 reported only" in table
