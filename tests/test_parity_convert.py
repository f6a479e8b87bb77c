"""Weight conversion: bit-exact round trips, DiT forward/JVP parity in float64, and named errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_meanflow import dit as jdit
from jax_meanflow.params import randomize_params
from meanflow_common.config import DIT_PRESETS
from parity.convert import (
    Rule,
    Table,
    expand_rules,
    flatten_tree,
    jax_to_torch,
    torch_to_jax,
    unflatten_tree,
)
from parity.convert.tables.dit import TABLE as DIT_TABLE
from torch_meanflow import dit as tdit

jax.config.update("jax_enable_x64", True)

CFG = DIT_PRESETS["tiny"]
B = 3


@pytest.fixture(scope="module")
def jax_params():
    return randomize_params(jdit.init_dit(CFG, jax.random.PRNGKey(0), jnp.float64), seed=2)


@pytest.fixture(scope="module")
def torch_model(jax_params):
    model = tdit.DiT(CFG).double()
    sd = jax_to_torch(jax_params, DIT_TABLE, CFG, template=model.state_dict())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return model


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, CFG.input_size, CFG.input_size, CFG.in_channels))  # NHWC
    t = rng.uniform(0.2, 0.9, B)
    r = t * rng.uniform(0.0, 1.0, B)
    v = rng.standard_normal(x.shape)
    y = np.array([1, 4, CFG.num_classes])
    return x, t, r, v, y


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trips_are_bit_exact(jax_params, dtype):
    params = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(dtype), jax_params)
    sd = jax_to_torch(params, DIT_TABLE, CFG)
    assert all(v.dtype == dtype and v.flags.c_contiguous for v in sd.values())
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * CFG.hidden_size, CFG.hidden_size)
    np.testing.assert_array_equal(sd["x_embedder.proj.weight"], params["x_embedder"]["proj"]["kernel"].transpose(3, 2, 0, 1))
    back = flatten_tree(torch_to_jax({k: torch.from_numpy(v) for k, v in sd.items()}, DIT_TABLE, CFG, template=params))
    flat = flatten_tree(params)
    assert back.keys() == flat.keys()
    for k in flat:
        assert back[k].dtype == dtype and np.array_equal(back[k], flat[k]), k
    again = jax_to_torch(unflatten_tree(back), DIT_TABLE, CFG)
    assert all(np.array_equal(again[k], sd[k]) for k in sd)


def test_torch_first_round_trip_and_discovered_depth():
    model = tdit.DiT(CFG).double()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    tree = torch_to_jax(sd, DIT_TABLE)  # no config: block indices discovered from the keys
    assert len(tree["blocks"]) == CFG.depth
    back = jax_to_torch({"params": tree}, DIT_TABLE)
    assert back.keys() == sd.keys() and all(np.array_equal(back[k], sd[k]) for k in sd)


def test_converted_forward_and_jvp_match_in_float64(jax_params, torch_model):
    x, t, r, v, y = _inputs()
    u_j = jdit.make_u_fn(jdit.DiT(CFG), jax_params)
    u_t = tdit.make_u_fn(torch_model)
    f_j = lambda z, tt, rr: u_j(z, tt, tt - rr, jnp.asarray(y))  # noqa: E731
    f_t = lambda z, tt, rr: u_t(z, tt, tt - rr, torch.from_numpy(y))  # noqa: E731
    ones, zeros = np.ones(B), np.zeros(B)
    uj, dj = jax.jvp(f_j, tuple(map(jnp.asarray, (x, t, r))), tuple(map(jnp.asarray, (v, ones, zeros))))
    with torch.no_grad():
        ut, dt = torch.func.jvp(
            f_t, (_nchw(x), torch.from_numpy(t), torch.from_numpy(r)),
            (_nchw(v), torch.from_numpy(ones), torch.from_numpy(zeros)),
        )
    uj, dj = np.asarray(uj), np.asarray(dj)
    ut, dt = ut.numpy().transpose(0, 2, 3, 1), dt.numpy().transpose(0, 2, 3, 1)
    assert np.abs(uj).max() > 0.1 and np.abs(dj).max() > 0.1
    assert _rel(uj, ut) < 1e-12
    assert _rel(dj, dt) < 1e-12


def test_missing_unexpected_and_misshaped_keys_are_named(jax_params, torch_model):
    flat = flatten_tree(jax_params)
    template = torch_model.state_dict()
    gone = dict(flat)
    del gone["blocks/layers_1/attn/proj/_flax_linear/bias"]
    with pytest.raises(KeyError, match="blocks/layers_1/attn/proj/_flax_linear/bias"):
        jax_to_torch(unflatten_tree(gone), DIT_TABLE, CFG)
    extra = dict(flat, **{"blocks/layers_0/attn/q_norm/scale": np.ones(16)})
    with pytest.raises(KeyError, match="unexpected Flax parameter 'blocks/layers_0/attn/q_norm/scale'"):
        jax_to_torch(unflatten_tree(extra), DIT_TABLE, CFG)
    deeper = dict(flat, **{"blocks/layers_2/mlp/fc1/_flax_linear/bias": np.ones(256)})
    with pytest.raises(KeyError, match="blocks/layers_2/mlp/fc1/_flax_linear/bias"):
        jax_to_torch(unflatten_tree(deeper), DIT_TABLE, CFG)  # depth 2 from the config: layers_2 is unexpected
    wrong = dict(flat, **{"final_layer/linear/_flax_linear/kernel": np.ones((CFG.hidden_size, 8))})
    with pytest.raises(ValueError, match="final_layer.linear.weight"):
        jax_to_torch(unflatten_tree(wrong), DIT_TABLE, CFG, template=template)
    rank = dict(flat, **{"x_embedder/proj/kernel": np.ones((4, 64))})
    with pytest.raises(ValueError, match="x_embedder/proj/kernel.*rank 4"):
        jax_to_torch(unflatten_tree(rank), DIT_TABLE, CFG)
    sd = {k: v.clone() for k, v in template.items()}
    sd.pop("y_embedder.embedding_table.weight")
    with pytest.raises(KeyError, match="y_embedder.embedding_table.weight"):
        torch_to_jax(sd, DIT_TABLE, CFG)
    with pytest.raises(KeyError, match="unexpected torch parameter 'pos_embed'"):
        torch_to_jax(dict(template, pos_embed=torch.zeros(1, 16, 64)), DIT_TABLE, CFG)


def test_template_mismatch_exposes_a_table_bug(jax_params, torch_model):
    rules = [r for r in DIT_TABLE.rules_for(CFG) if r.torch_name != "final_layer.linear.bias"]
    flat = flatten_tree(jax_params)
    del flat["final_layer/linear/_flax_linear/bias"]
    short = Table("short", tuple(rules), DIT_TABLE.ranges)
    with pytest.raises(KeyError, match="'final_layer.linear.bias' is missing"):
        jax_to_torch(unflatten_tree(flat), short, CFG, template=torch_model.state_dict())
    renamed = [Rule(r.jax_path, r.torch_name.replace("final_layer.linear.", "final.linear."), r.kind) for r in rules]
    with pytest.raises(KeyError, match=r"2 missing in all: \['final_layer.linear.bias', 'final_layer.linear.weight'\]"):
        jax_to_torch(unflatten_tree(flat), Table("renamed", tuple(renamed), short.ranges), CFG,
                     template=torch_model.state_dict())


def test_bad_tables_are_rejected():
    with pytest.raises(ValueError, match="unknown kind 'transpose'"):
        Rule("a/kernel", "a.weight", "transpose")
    with pytest.raises(ValueError, match="placeholders differ"):
        Rule("blocks/layers_{i}/kernel", "blocks.weight", "linear_kernel")
    twice = Table("twice", (Rule("a/kernel", "a.weight", "linear_kernel"), Rule("b/kernel", "a.weight", "linear_kernel")))
    with pytest.raises(ValueError, match="two rules produce the torch name 'a.weight'"):
        expand_rules(twice)
    # a table is an object, looked up through its architecture: a name is refused, naming the way
    with pytest.raises(TypeError, match=r"parity.get_arch\('dit'\).table"):
        jax_to_torch({}, "dit")
