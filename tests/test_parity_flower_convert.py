"""FLOWER conversion table: JAX -> torch -> JAX is bit exact and the converted torch network
computes what the JAX one does (u and du/dt) in float64, for both h placements and both
position modes; bad keys and shapes are named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_meanflow import flower as jf
from jax_meanflow.params import randomize_params
from meanflow_common.config import FLOWER_PRESETS, override
from parity.convert import ConversionError, ConversionShapeError, flatten_tree, jax_to_torch, torch_to_jax
from parity.convert.tables.flower import TABLE as FLOWER_TABLE
from torch_meanflow import flower as tf

jax.config.update("jax_enable_x64", True)

VARIANTS = [
    dict(h_placement="adaln", position_mode="rope"),
    dict(h_placement="adaln", position_mode="learned", use_proprio=True),
    dict(h_placement="decoder", position_mode="rope", use_proprio=True),
    dict(h_placement="decoder", position_mode="learned"),
]


def _pair(over, seed=0):
    cfg = override(FLOWER_PRESETS["tiny"], over)
    params = randomize_params(jf.init_flower(cfg, seed, jnp.float64), seed=seed + 1)
    model = tf.init_flower(cfg, seed, torch.float64)
    sd = jax_to_torch(params, FLOWER_TABLE, cfg, template=model.state_dict())
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
    return cfg, params, model


def _inputs(cfg, batch=3, seed=5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, cfg.act_window_size, cfg.action_dim))
    v = rng.normal(size=z.shape)
    t = rng.uniform(0.2, 0.9, size=batch)
    r = t * rng.uniform(0.0, 0.8, size=batch)
    tokens = rng.normal(size=(batch, 6, cfg.cond_dim))
    freq = rng.normal(size=(batch, cfg.dit_dim))
    proprio = rng.normal(size=(batch, cfg.proprio_dim)) if cfg.use_proprio else None
    return z, v, t, r, tokens, freq, proprio


@pytest.mark.parametrize("over", VARIANTS, ids=lambda o: "-".join(str(x) for x in o.values()))
def test_round_trip_and_forward_parity(over):
    cfg, params, model = _pair(over)
    back = torch_to_jax(model.state_dict(), FLOWER_TABLE, cfg, template=params)
    flat_a, flat_b = flatten_tree(params), flatten_tree(back)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        a, b = np.asarray(flat_a[key]), flat_b[key]
        assert a.dtype == b.dtype and np.array_equal(a, b), key

    z, v, t, r, tokens, freq, proprio = _inputs(cfg)
    J, T = jnp.asarray, torch.from_numpy
    jcond = jf.FlowerCond(J(tokens), J(freq), None if proprio is None else J(proprio))
    tcond = tf.FlowerCond(T(tokens), T(freq), None if proprio is None else T(proprio))
    ju = jf.make_u_fn(jf.FlowerTransformer(cfg), params)
    tu = tf.make_u_fn(model)

    def jf_(z, t, r):
        return ju(z, t, t - r, jcond)

    def tf_(z, t, r):
        return tu(z, t, t - r, tcond)

    u_j, du_j = jax.jvp(jf_, (J(z), J(t), J(r)), (J(v), jnp.ones(len(t)), jnp.zeros(len(t))))
    with torch.no_grad():
        u_t, du_t = torch.func.jvp(tf_, (T(z), T(t), T(r)), (T(v), torch.ones(len(t), dtype=torch.float64),
                                                             torch.zeros(len(t), dtype=torch.float64)))
    for a, b in ((u_j, u_t), (du_j, du_t)):
        a, b = np.asarray(a), b.numpy()
        assert np.abs(b).max() > 1e-3
        assert np.abs(a - b).max() <= 1e-11 * np.abs(a).max()


def test_frequency_embedding_parity():
    cfg, params, model = _pair(VARIANTS[0])
    freq = np.array([3.0, 10.0, 0.5])
    a = jf.FlowerTransformer(cfg).apply({"params": params}, jnp.asarray(freq), method="embed_frequency")
    with torch.no_grad():
        b = model.embed_frequency(torch.from_numpy(freq)).numpy()
    assert np.abs(np.asarray(a) - b).max() <= 1e-12 * np.abs(b).max()


def test_bad_keys_and_shapes_are_named():
    cfg, params, model = _pair(VARIANTS[1])
    sd = {k: v.numpy() for k, v in model.state_dict().items()}

    missing = dict(sd)
    del missing["dit.1.cross_attn.q_norm.weight"]
    with pytest.raises(ConversionError, match=r"dit\.1\.cross_attn\.q_norm\.weight"):
        torch_to_jax(missing, FLOWER_TABLE, cfg, template=params)

    extra = dict(sd, **{"action_space_embedder.action_embeddings": np.zeros((3, 4))})
    with pytest.raises(ConversionError, match="action_space_embedder"):
        torch_to_jax(extra, FLOWER_TABLE, cfg, template=params)

    bad = dict(sd, **{"cond_linear.weight": np.zeros((cfg.dit_dim, cfg.cond_dim + 1))})
    with pytest.raises(ConversionShapeError, match="cond_linear"):
        torch_to_jax(bad, FLOWER_TABLE, cfg, template=params)

    # a tree built for the other h placement lacks the decoder keys this config needs
    other = override(cfg, {"h_placement": "decoder"})
    with pytest.raises(ConversionError, match="action_decoders"):
        jax_to_torch(params, FLOWER_TABLE, other)

    with pytest.raises(ValueError, match="FlowerConfig"):
        jax_to_torch(params, FLOWER_TABLE, None)


def test_table_without_positions_matches_both_inits():
    cfg = override(FLOWER_PRESETS["tiny"], {"position_mode": "none", "use_proprio": True})
    params = jf.init_flower(cfg, 0, jnp.float64)
    model = tf.init_flower(cfg, 0, torch.float64)
    sd = jax_to_torch(params, FLOWER_TABLE, cfg, template=model.state_dict())
    assert "positional_encoding" not in sd and len(sd) == len(model.state_dict())
    back = torch_to_jax(model.state_dict(), FLOWER_TABLE, cfg, template=params)
    assert flatten_tree(back).keys() == flatten_tree(params).keys()
