"""The parity harness's cost-saving mechanisms give the results of the plain ones, bit for bit.

Each mechanism is compared with the straightforward computation it replaces: weights drawn
into the model's shapes in float32 (against the float64 draw into an initialised tree, then
rounded), gradients converted leaf by leaf while the source is emptied, the torch module
sharing the converted arrays, the in-place NumPy Adam, one executable serving the trained
variant, and forgotten executables recompiled to the same numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity import convert
from parity.core import harness as H
from parity.archs.registry import get_arch
from parity.core.executables import compile_count

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

jax.config.update("jax_enable_x64", True)


def _variant(arch: str, k: int = 0):
    return get_arch(arch).default_variants("tiny")[k]


def _old_random_params(arch, v, seed):
    """The former draw: a float64 init, randomised, as NumPy float64."""
    from jax_meanflow.params import randomize_params

    _, init = arch.jax_build(v.model_cfg)
    params = randomize_params(init(jax.random.PRNGKey(seed), jnp.float64), seed)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_random_params_from_shapes_match_the_initialised_draw(arch):
    a, v = get_arch(arch), _variant(arch)
    old = _old_random_params(a, v, 3)
    new64 = H.random_params(a, v, 3)
    new32 = H.random_params(a, v, 3, "float32")
    assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(new64)
    assert all(x.dtype == np.float64 and np.array_equal(x, y) for x, y in zip(_leaves(new64), _leaves(old)))
    assert all(x.dtype == np.float32 and np.array_equal(x, y.astype(np.float32))
               for x, y in zip(_leaves(new32), _leaves(old)))
    assert all(np.any(x != 0) for x in _leaves(new32))  # every leaf random, zero-init ones included


def _as_tuples(results):
    return [(r.quantity, r.max_abs, r.max_rel, r.where, r.passed,
             [(g["quantity"], g["max_abs"], g["where"]) for g in (r.info.get("per_parameter") or [])])
            for r in results]


@pytest.mark.parametrize("arch", ["dit", "flower"])
def test_float32_master_weights_give_the_float64_master_results(arch):
    """The float32 check on float32 masters (the default) against the same check fed the
    float64 weights (each side rounding them itself): every term and every parameter's
    gradient error identical."""
    a, v = get_arch(arch), _variant(arch)
    default = H.run_variant(v, "float32", batch=3)
    given64 = H.run_variant(v, "float32", batch=3, params_np=H.random_params(a, v, 0, "float64"))
    assert _as_tuples(default) == _as_tuples(given64)
    assert len(default[-1].info["per_parameter"]) == len(convert.flatten_tree(H.random_params(a, v, 0)))


def test_leaf_by_leaf_conversion_equals_the_whole_tree_one():
    a, v = get_arch("dit"), _variant("dit")
    params = H.random_params(a, v, 1, "float32")
    whole = convert.jax_to_torch(params, a.table, v.model_cfg)
    flat = convert.flatten_tree(params)
    n = len(flat)
    streamed = convert.jax_to_torch(flat, a.table, v.model_cfg, consume=True)
    assert flat == {} and len(streamed) == n
    assert sorted(whole) == sorted(streamed)
    assert all(whole[k].dtype == streamed[k].dtype and np.array_equal(whole[k], streamed[k]) for k in whole)
    with pytest.raises(TypeError, match="flat dict"):
        convert.jax_to_torch(params, a.table, v.model_cfg, consume=True)


def test_shared_state_dict_module_gives_the_copying_module_results():
    import torch

    from parity.core.sides import build_torch

    a, v = get_arch("dit"), _variant("dit")
    state = H.torch_state(v, H.random_params(a, v, 2, "float32"))
    shared = build_torch(a, v.model_cfg, state, "float32", share=True)
    copied = build_torch(a, v.model_cfg, state, "float32")
    name, p = next(iter(shared.named_parameters()))
    assert p.data_ptr() == torch.as_tensor(state[name]).data_ptr()  # no second copy
    assert next(iter(copied.parameters())).data_ptr() != p.data_ptr()
    frozen = {k: np.array(x) for k, x in state.items()}
    for x in frozen.values():
        x.setflags(write=False)
    ro = build_torch(a, v.model_cfg, frozen, "float32", share=True)
    assert next(iter(ro.parameters())).data_ptr() != frozen[name].ctypes.data  # read-only memory is copied
    bundle = a.make_bundle(v, 3, 1)
    one = H.run_torch(a, v, state, bundle, "float32", "cpu")
    two = H.run_torch(a, v, frozen, bundle, "float32", "cpu")
    assert all(np.array_equal(one.terms[k], two.terms[k]) for k in H.TERMS)
    assert all(np.array_equal(one.grads[k], two.grads[k]) for k in one.grads)
    assert all(g.dtype == np.float32 for g in one.grads.values())


def _functional_adam(arch, v, seed, steps, batch, lr=3e-3):
    """The tree-at-a-time Adam of the harness before it updated in place (float64)."""
    from parity.core.sides import jax_inputs

    _, init = arch.jax_build(v.model_cfg)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), init(jax.random.PRNGKey(seed), jnp.float64))
    b1, b2, eps = 0.9, 0.95, 1e-8
    m = jax.tree_util.tree_map(np.zeros_like, params)
    s = jax.tree_util.tree_map(np.zeros_like, params)
    for k in range(1, steps + 1):
        bundle = arch.make_bundle(v, batch, seed + 1000 + k)
        with jax.default_device(jax.devices("cpu")[0]):
            inputs = jax_inputs(arch, v, bundle, "float64")
            fn = H.executable(v, params, inputs, "float64", "cpu")
            _, grads = fn(jax.tree_util.tree_map(jnp.asarray, params), *inputs)  # a device copy: donated
        grads = jax.tree_util.tree_map(np.asarray, grads)
        m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
        s = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, s, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - lr * (m_ / (1 - b1**k)) / (np.sqrt(v_ / (1 - b2**k)) + eps), params, m, s)
    return params


def test_in_place_adam_equals_the_functional_one():
    """Equal up to float64 rounding (the in-place update groups lr / c1 and divides by
    sqrt(v / c2) + eps in another order). Negative control: b2 = 0.999 instead of 0.95 in
    the functional Adam moves the weights by 1.5e-3 (against 1.4e-16), far outside the tolerance."""
    a, v = get_arch("dit"), _variant("dit")
    got = H.trained_params(a, v, 0, 3, batch=4)
    want = _functional_adam(a, v, 0, 3, batch=4)
    assert all(x.dtype == np.float64 for x in _leaves(got))
    for x, y in zip(_leaves(got), _leaves(want)):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)
    moved = [x for x, y in zip(_leaves(got), _leaves(_old_random_params(a, v, 0))) if np.any(x != 0)]
    assert moved  # training moved the zero-initialised layers


def test_trained_variant_reuses_the_checks_executable_and_forgotten_ones_recompile_the_same():
    a, v = get_arch("dit"), _variant("dit", 1)
    H.forget_compiled(v)
    results = H.run_variant(v, "float32", batch=3)  # the reference's and the float64 truth's
    before = compile_count()
    H.trained_params(a, v, 0, 2, batch=3, dtype="float32")
    assert compile_count() == before  # no second compilation for the training steps
    assert H.forget_compiled(v) == 2
    assert H.forget_compiled(v) == 0
    assert _as_tuples(H.run_variant(v, "float32", batch=3)) == _as_tuples(results)
    assert compile_count() == before + 2  # recompiled once forgotten
    H.run_variant(v, "float32", batch=3)
    assert compile_count() == before + 2


def test_x64_off_check_on_the_suites_torch_side_equals_a_fresh_one():
    """The suite hands its first variant's torch outputs to the x64-off check (one torch run
    fewer); the rows are those of the check run on its own."""
    from parity.suite.run import run_suite
    from parity.checks.x64_off import x64_off_checks

    v = _variant("dit", 2)
    results, _ = run_suite([v], ["float32"], ["cpu"], batch=3, checks=("x64off",))
    rows = [r for r in results if r.variant.endswith("x64 off")]
    assert len(rows) == len(H.TERMS) + 1 and results[-len(rows):] == rows  # reported last, as before
    alone = x64_off_checks([v], batch=3)
    assert _as_tuples(rows) == _as_tuples(alone)
