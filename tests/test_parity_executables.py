"""The harness's compiled executables and streamed conversions give the plain results.

Executables compiled side by side in threads, the donated weights, the float64 truth reduced
leaf by leaf as it is converted, the weights converted to torch while being given up, and the
x64-off child overlapped with the parent: each against the straightforward computation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import convert
from parity.core import executables as E
from parity.core import harness as H
from parity.archs.registry import get_arch
from parity.core.inputs import rounded_bundle
from parity.core.precision import jax_compiler_options, pinned_precision
from parity.core.rule import own_errors
from parity.core.sides import jax_inputs

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

jax.config.update("jax_enable_x64", True)


def _variant(arch: str = "dit", k: int = 0):
    return get_arch(arch).default_variants("tiny")[k]


def _rows(results):
    return [(r.quantity, r.max_abs, r.max_rel, r.tol, r.where, r.passed) for r in results]


def test_executables_compiled_side_by_side_give_the_serially_compiled_results():
    v = _variant("dit", 1)
    E.forget_compiled(v)
    with pinned_precision(True):
        bundle = v.arch.make_bundle(v, 3, 1)
        shapes = H.param_shapes(v.arch, v.model_cfg)
        for d in ("float32", "float64"):  # one at a time, in this thread
            E.executable(v, shapes, jax_inputs(v.arch, v, bundle, d), d, "cpu")
        serial = H.run_variant(v, "float32", batch=3)
        assert E.forget_compiled(v) == 2
        before = E.compile_count()
        threaded = H.run_variant(v, "float32", batch=3)  # compile_variant: both at once
    assert E.compile_count() == before + 2
    assert _rows(serial) == _rows(threaded)


def test_the_cache_key_holds_the_matmul_precision():
    """An executable traced under another default matmul precision is another executable
    (jax.jit keys its cache on it; so must ours), never the pinned one reused."""
    v = _variant("dit", 2)
    E.forget_compiled(v)
    bundle = v.arch.make_bundle(v, 3, 1)
    shapes = H.param_shapes(v.arch, v.model_cfg)
    with pinned_precision(True):
        pinned = E.executable(v, shapes, jax_inputs(v.arch, v, bundle, "float32"), "float32", "cpu")
    with pinned_precision(False):
        default = E.executable(v, shapes, jax_inputs(v.arch, v, bundle, "float32"), "float32", "cpu")
    assert default is not pinned
    assert E.forget_compiled(v) == 2


def test_the_weights_are_donated_and_the_gradients_equal_an_undonated_run():
    v = _variant("dit")
    params = H.random_params(v.arch, v, 0, "float32")
    bundle = v.arch.make_bundle(v, 3, 1)
    with pinned_precision(True):
        inputs = jax_inputs(v.arch, v, bundle, "float32")
        exe = E.executable(v, params, inputs, "float32", "cpu")
        device = jax.tree_util.tree_map(jnp.asarray, params)
        (_, out), grads = exe(device, *inputs)
        assert all(a.is_deleted() for a in jax.tree_util.tree_leaves(device))  # written into, not copied
        plain = jax.jit(jax.value_and_grad(_loss(v), has_aux=True),
                        compiler_options=jax_compiler_options("fast", "cpu"))  # no donation
        (_, out2), grads2 = plain(jax.tree_util.tree_map(jnp.asarray, params), *inputs)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads2)))
    # the executable returns the objective's named quantities; the plain run MeanFlow's output
    assert np.array_equal(out["u"], out2.u) and np.array_equal(out["du_dt"], out2.du_dt)


def _loss(v):
    from jax_meanflow.objective import meanflow_loss

    module, _ = v.arch.jax_build(v.model_cfg)

    def loss_fn(params, x, y, noise, null_y):
        out = meanflow_loss(v.arch.jax_u_fn(module, params), x, y, noise, v.mf_cfg, null_y=null_y, train=False)
        return out.loss, out

    return loss_fn


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_the_streamed_float64_truth_gives_the_whole_tree_own_errors(arch):
    v = _variant(arch)
    params = H.random_params(v.arch, v, 0, "float32")
    bundle = v.arch.make_bundle(v, 3, 1)
    with pinned_precision(True):
        ref = H.run_jax(v.arch, v, params, bundle, "float32", "cpu")
        streamed = H.reference_own_errors(v.arch, v, params, bundle, ref, "cpu")
        truth = H.run_jax(v.arch, v, params, rounded_bundle(bundle, np.float32), "float64", "cpu")
    whole = own_errors(ref, truth)
    assert streamed.terms == whole.terms and streamed.grads == whole.grads
    assert streamed.grad_floor_scale == whole.grad_floor_scale
    assert any(e[0] > 0 for e in whole.grads.values())  # float32 rounding was measured, not zeros


def test_iterated_conversion_equals_the_whole_one_and_checks_keys_first():
    v = _variant("dit")
    params = H.random_params(v.arch, v, 1, "float32")
    whole = convert.jax_to_torch(params, v.arch.table, v.model_cfg)
    flat = convert.flatten_tree(params)
    it = convert.iter_jax_to_torch(flat, v.arch.table, v.model_cfg)
    streamed = dict(it)
    assert flat == {} and sorted(streamed) == sorted(whole)
    assert all(np.array_equal(whole[k], streamed[k]) for k in whole)
    bad = convert.flatten_tree(params)
    bad["bogus/kernel"] = np.zeros(3)
    with pytest.raises(convert.ConversionError, match="unexpected Flax parameter 'bogus/kernel'"):
        convert.iter_jax_to_torch(bad, v.arch.table, v.model_cfg)  # raised at the call, before any leaf
    assert "bogus/kernel" in bad and len(bad) == len(whole) + 1  # nothing popped


def test_consumed_weights_convert_to_the_same_state_and_are_given_up():
    v = _variant("flower")
    params = H.random_params(v.arch, v, 2, "float32")
    kept = H.torch_state(v, params)
    given = jax.tree_util.tree_map(np.copy, params)
    consumed = H.torch_state(v, given, consume=True)
    assert given == {}
    assert sorted(kept) == sorted(consumed) and all(np.array_equal(kept[k], consumed[k]) for k in kept)


def test_the_x64_off_child_is_compared_with_the_torch_side_of_its_own_weights():
    """Negative control: the child draws its weights from the seed; against the torch side of
    other weights (seed 1 instead of 0) the check fails, so the check reads the child's run."""
    from parity.checks.x64_off import X64OffRun, x64_off_checks

    v = _variant("dit", 2)
    with pinned_precision(True):
        other = H.run_torch(v.arch, v, H.torch_state(v, H.random_params(v.arch, v, 1, "float32")),
                            v.arch.make_bundle(v, 3, 1), "float32", "cpu")
        run = X64OffRun([v], seed=0, batch=3)
        good = x64_off_checks([v], seed=0, batch=3, run=run)
        bad = x64_off_checks([v], seed=0, batch=3, torch_sides={v.name: other})
    assert all(r.passed for r in good)
    assert {r.quantity for r in bad if not r.passed} >= {"u", "du_dt", "u_tgt", "grad"}
    run = X64OffRun([v], seed=0, batch=3)
    try:
        with pytest.raises(ValueError, match="the child did not run"):
            x64_off_checks([_variant("dit", 1)], batch=3, run=run)
        with pytest.raises(ValueError, match="the child ran seed 0, batch 3"):
            x64_off_checks([v], seed=1, batch=3, run=run)  # its weights are seed 0's
    finally:
        run.close()
