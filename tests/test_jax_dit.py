"""JAX DiT: tree layout, input checks and official-tree loading. (The objective's du/dt is
checked against a NumPy closed form in tests/test_objective_oracle.py and against PyTorch
by the parity suite.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_meanflow.dit import DiT, init_dit, load_official_params, make_u_fn
from jax_meanflow.params import count_params, randomize_params
from meanflow_common.config import DIT_PRESETS
from parity.convert import flatten_tree, unflatten_tree

jax.config.update("jax_enable_x64", True)

CFG = DIT_PRESETS["tiny"]  # 8x8x4, patch 2, D 64, depth 2, 10 classes
B = 3


@pytest.fixture(scope="module")
def model():
    return DiT(CFG)


@pytest.fixture(scope="module")
def params():
    return randomize_params(init_dit(CFG, jax.random.PRNGKey(0), jnp.float64), seed=1)


def _inputs(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, CFG.input_size, CFG.input_size, CFG.in_channels)).astype(dtype)
    t = rng.uniform(0.2, 0.9, B).astype(dtype)
    r = (t * rng.uniform(0.0, 1.0, B)).astype(dtype)
    y = np.array([0, 7, CFG.num_classes], dtype=np.int32)  # the last one is the null class
    return jnp.asarray(x), jnp.asarray(t), jnp.asarray(r), jnp.asarray(y)


def test_tree_is_the_official_layout(params):
    flat = flatten_tree(params)
    d, p, c = CFG.hidden_size, CFG.patch_size, CFG.in_channels
    expected = {
        "x_embedder/proj/kernel": (p, p, c, d),
        "t_embedder/mlp/layers_0/_flax_linear/kernel": (CFG.frequency_embedding_size, d),
        "t_embedder/mlp/layers_2/_flax_linear/bias": (d,),
        "h_embedder/mlp/layers_2/_flax_linear/kernel": (d, d),
        "y_embedder/embedding_table/_flax_embedding/embedding": (CFG.num_classes + 1, d),
        "blocks/layers_1/attn/qkv/_flax_linear/kernel": (d, 3 * d),
        "blocks/layers_1/attn/proj/_flax_linear/bias": (d,),
        "blocks/layers_0/mlp/fc1/_flax_linear/kernel": (d, 4 * d),
        "blocks/layers_0/mlp/fc2/_flax_linear/kernel": (4 * d, d),
        "blocks/layers_0/adaLN_modulation/layers_1/_flax_linear/kernel": (d, 6 * d),
        "final_layer/linear/_flax_linear/kernel": (d, p * p * c),
        "final_layer/adaLN_modulation/layers_1/_flax_linear/bias": (2 * d,),
    }
    for key, shape in expected.items():
        assert flat[key].shape == shape, key
    assert len(flat) == 3 + 2 * 4 + CFG.depth * 10 + 4
    assert not any(k.startswith("blocks/layers_2") for k in flat)


def test_reference_initialisation_gives_zero_output(model):
    """The zero-initialised adaLN and final layers make u == 0 (why tests randomise)."""
    p = init_dit(CFG, jax.random.PRNGKey(0), jnp.float64)
    flat = flatten_tree(p)
    assert not np.any(flat["final_layer/linear/_flax_linear/kernel"])
    assert not np.any(flat["blocks/layers_0/adaLN_modulation/layers_1/_flax_linear/kernel"])
    assert 0.01 < float(np.std(flat["y_embedder/embedding_table/_flax_embedding/embedding"])) < 0.03
    x, t, r, y = _inputs()
    assert not np.any(np.asarray(make_u_fn(model, p)(x, t, t - r, y)))


def test_randomize_params_every_leaf(params):
    fresh = flatten_tree(init_dit(CFG, jax.random.PRNGKey(0), jnp.float64))
    rand = flatten_tree(params)
    assert rand.keys() == fresh.keys()
    for k in fresh:
        assert rand[k].dtype == jnp.float64 and rand[k].shape == fresh[k].shape
        assert not np.allclose(rand[k], fresh[k]), k
    again = flatten_tree(randomize_params(unflatten_tree(fresh), seed=1))
    assert all(np.array_equal(again[k], rand[k]) for k in rand)
    assert count_params(params) == sum(v.size for v in rand.values())


def test_output_shape_dtype_and_nontrivial(model, params):
    x, t, r, y = _inputs()
    u = make_u_fn(model, params)(x, t, t - r, y)
    assert u.shape == x.shape and u.dtype == jnp.float64
    assert 0.1 < float(jnp.std(u)) < 10.0
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    u32 = make_u_fn(model, p32)(*(a.astype(jnp.float32) if a.dtype == jnp.float64 else a for a in (x, t, t - r, y)))
    assert u32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(u32), np.asarray(u), rtol=0, atol=1e-4 * float(jnp.abs(u).max()))


def test_unpatchify_inverts_the_patch_order(model, params):
    g, p, c = CFG.input_size // CFG.patch_size, CFG.patch_size, CFG.in_channels
    img = np.random.default_rng(3).standard_normal((2, g * p, g * p, c))
    tokens = img.reshape(2, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(2, g * g, p * p * c)
    out = model.apply({"params": params}, jnp.asarray(tokens), method=DiT.unpatchify)
    np.testing.assert_array_equal(np.asarray(out), img)


def test_rejects_nchw_and_bad_shapes(model, params):
    u_fn = make_u_fn(model, params)
    x, t, r, y = _inputs()
    with pytest.raises(ValueError, match="NCHW"):
        u_fn(x.transpose(0, 3, 1, 2), t, t - r, y)
    with pytest.raises(ValueError, match="spatial size"):
        u_fn(x[:, :6, :6], t, t - r, y)
    with pytest.raises(ValueError, match="expected in_channels"):
        u_fn(x[..., :3], t, t - r, y)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        u_fn(x, t[:, None], t - r, y)
    with pytest.raises(ValueError, match=r"h must have shape \[B\]"):
        u_fn(x, t, (t - r)[:2], y)


def test_rejects_bad_labels_but_not_traced_ones(model, params):
    u_fn = make_u_fn(model, params)
    x, t, r, y = _inputs()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        u_fn(x, t, t - r, y.at[1].set(CFG.num_classes + 1))
    with pytest.raises(ValueError, match="labels must lie"):
        u_fn(x, t, t - r, y.at[0].set(-1))
    with pytest.raises(TypeError, match="integers"):
        u_fn(x, t, t - r, y.astype(jnp.float64))
    jitted = jax.jit(u_fn)(x, t, t - r, y)  # traced labels: no concrete check, no error
    assert jitted.shape == x.shape


def test_load_official_tree_with_net_prefix(model, params):
    x, t, r, y = _inputs()
    want = make_u_fn(model, params)(x, t, t - r, y)
    for tree in ({"net": params}, {"params": {"net": params}}, params):
        loaded = load_official_params(tree, CFG)
        np.testing.assert_array_equal(np.asarray(make_u_fn(model, loaded)(x, t, t - r, y)), np.asarray(want))
    as32 = load_official_params({"net": params}, CFG, dtype=jnp.float32)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(as32))


def test_load_official_tree_errors_name_the_key(params):
    flat = flatten_tree(params)
    missing = dict(flat)
    del missing["blocks/layers_1/mlp/fc2/_flax_linear/bias"]
    with pytest.raises(KeyError, match="blocks/layers_1/mlp/fc2/_flax_linear/bias"):
        load_official_params({"net": unflatten_tree(missing)}, CFG)
    extra = dict(flat, **{"blocks/layers_2/attn/qkv/_flax_linear/kernel": np.zeros((64, 192))})
    with pytest.raises(KeyError, match="blocks/layers_2/attn/qkv/_flax_linear/kernel"):
        load_official_params({"net": unflatten_tree(extra)}, CFG)
    bad = dict(flat, **{"x_embedder/proj/kernel": np.zeros((4, 4, 4, 64))})
    with pytest.raises(ValueError, match="x_embedder/proj/kernel"):
        load_official_params({"net": unflatten_tree(bad)}, CFG)

