"""FLOWER's flow transformer in JAX: shapes, causality, dropout (one mask for primal and
tangent) and input validation. (jax.jvp of the network needs no finite-difference check: the
objective's use of it is checked against a NumPy closed form in tests/test_objective_oracle.py
and the network's JVP against PyTorch's by the parity suite.) Every check runs on randomised parameters (the zero-init
controller would otherwise hide most of the network). XLA compilation dominates the run
time on CPU, so each network is compiled once (jitted u and its JVP) and reused."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_meanflow.flower import FlowerCond, FlowerTransformer, init_flower, make_u_fn
from jax_meanflow.params import randomize_params
from meanflow_common.config import FLOWER_PRESETS, FlowerConfig, override

jax.config.update("jax_enable_x64", True)

# Each option value appears once here (the torch tests and the parity test cover all four
# placement x position combinations): adaln + RoPE + proprio, decoder + learned positions.
VARIANTS = [("adaln", "rope", True), ("decoder", "learned", False)]


def _config(h_placement="adaln", position_mode="rope", **kw):
    return override(FLOWER_PRESETS["tiny"], dict(h_placement=h_placement, position_mode=position_mode, **kw))


def _setup(cfg, dtype=jnp.float64, batch=3, seed=0):
    model = FlowerTransformer(cfg)
    params = randomize_params(init_flower(cfg, seed, dtype), seed=seed + 1)
    rng = np.random.default_rng(seed + 2)

    def arr(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    z = arr(batch, cfg.act_window_size, cfg.action_dim)
    t = jnp.asarray(rng.uniform(0.2, 0.9, size=batch), dtype)
    r = t * jnp.asarray(rng.uniform(0.0, 0.8, size=batch), dtype)
    proprio = arr(batch, cfg.proprio_dim) if cfg.use_proprio else None
    cond = FlowerCond(arr(batch, 5, cfg.cond_dim), arr(batch, cfg.dit_dim), proprio)
    return model, params, z, t, r, cond, arr


def _compiled(u_fn, cond, train=False):
    """Jitted JVP of f(z, t, r) = u(z, t, t - r) along (tz, 1, 0), and f as its primal
    (one compilation per network instead of two)."""

    def f(z, t, r):
        return u_fn(z, t, t - r, cond, train=train)

    @jax.jit
    def jvp(z, t, r, tz):
        return jax.jvp(f, (z, t, r), (tz, jnp.ones_like(t), jnp.zeros_like(r)))

    def primal(z, t, r):
        return jvp(z, t, r, jnp.zeros_like(z))[0]

    return primal, jvp


def _fd(f, z, t, r, v, eps=2e-6):
    """Five-point central difference along (v, 1, 0).

    FLOWER's time features oscillate like cos(1000 t): the two-point formula's
    eps^2 f'''/6 error would be ~1e-2 relative, the five-point one is ~1e-9.
    """

    def at(s):
        return f(z + s * eps * v, t + s * eps, r)

    return (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * eps)


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@functools.lru_cache(maxsize=None)
def _case(h_placement, position_mode, use_proprio):
    cfg = _config(h_placement, position_mode, use_proprio=use_proprio)
    model, params, z, t, r, cond, arr = _setup(cfg)
    f, jvp = _compiled(make_u_fn(model, params), cond)
    return cfg, model, params, (z, t, r, cond, arr(*z.shape)), f, jvp


@pytest.mark.parametrize("h_placement,position_mode,use_proprio", VARIANTS)
def test_shapes_and_h_dependence(h_placement, position_mode, use_proprio):
    cfg, model, params, (z, t, r, cond, _), f, _ = _case(h_placement, position_mode, use_proprio)
    u = f(z, t, r)
    assert u.shape == z.shape and u.dtype == jnp.float64
    assert float(jnp.max(jnp.abs(u - f(z, t, t)))) > 1e-4  # r = t means h = 0
    freq = model.apply({"params": params}, jnp.full((3,), 3.0), method="embed_frequency")
    assert freq.shape == (3, cfg.dit_dim) and freq.dtype == jnp.float64


def test_float32_end_to_end():
    cfg = _config("decoder", "rope")
    model, params, z, t, r, cond, _ = _setup(cfg, jnp.float32)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    u = jax.jit(make_u_fn(model, params))(z, t, t - r, cond)
    assert u.shape == z.shape and u.dtype == jnp.float32


def test_init_has_every_parameter_and_zero_controller():
    cfg = _config("decoder", "learned", use_proprio=True)
    params = init_flower(cfg, 0, jnp.float64)
    assert not np.any(np.asarray(params["adaln_eef_delta"]["modCX_1"]["kernel"]))
    assert params["adaln_eef_delta"]["modCX_1"]["kernel"].shape == (cfg.dit_dim, 9 * cfg.dit_dim)
    for name in ("frequency_embedder", "positional_encoding", "proprio_encoders_eef_delta",
                 "action_decoders_eef_delta", "cond_norm", "dit_1"):
        assert name in params
    assert "h_embedder" not in params
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    # nn.Linear's default: weight and bias within +-1/sqrt(fan_in), not all equal
    fc1 = params["action_encoders_eef_delta"]["fc1"]
    bound = 1 / np.sqrt(cfg.action_dim)
    assert np.all(np.abs(np.asarray(fc1["bias"])) <= bound) and np.std(np.asarray(fc1["bias"])) > 0
    again = init_flower(cfg, 0, jnp.float64)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))
    other = init_flower(cfg, jax.random.PRNGKey(3), jnp.float64)
    assert not np.array_equal(other["cond_linear"]["kernel"], params["cond_linear"]["kernel"])


def test_self_attention_is_causal():
    _, _, _, (z, t, r, _, _), f, _ = _case(*VARIANTS[0])
    u1, u2 = f(z, t, r), f(z.at[:, -1].add(1.0), t, r)
    np.testing.assert_array_equal(np.asarray(u1[:, :-1]), np.asarray(u2[:, :-1]))
    assert float(jnp.max(jnp.abs(u1[:, -1] - u2[:, -1]))) > 1e-4


def test_dropout_is_one_mask_under_jvp():
    """With one dropout key, the JVP tangent equals a finite difference of the same
    dropped-out function, so primal and tangent share the masks."""
    cfg = _config(attn_pdrop=0.3, resid_pdrop=0.3, mlp_pdrop=0.3, n_layers=1)
    model, params, z, t, r, cond, arr = _setup(cfg)
    # an "rbg" key: threefry dropout masks cost ~10 s of XLA compilation on this CPU
    f, jvp = _compiled(make_u_fn(model, params, jax.random.key(7, impl="rbg")), cond, train=True)
    v = arr(*z.shape)
    u, du = jvp(z, t, r, v)
    np.testing.assert_array_equal(np.asarray(u), np.asarray(f(z, t, r)))
    assert _rel(du, _fd(f, z, t, r, v)) < 1e-6
    u_eval = make_u_fn(model, params)
    assert float(jnp.max(jnp.abs(u - jax.jit(u_eval)(z, t, t - r, cond)))) > 1e-4
    with pytest.raises(ValueError, match="dropout_rng"):
        u_eval(z, t, t - r, cond, train=True)


def test_bad_inputs_are_named():
    cfg = _config()
    model, params, z, t, r, cond, arr = _setup(cfg, batch=2)
    u_fn = make_u_fn(model, params)
    h = t - r
    cases = [
        ((arr(2, 4, 5), t, h, cond), "action dim"),
        ((arr(2, 6, 3), t, h, cond), "window length"),
        ((arr(2, 4), t, h, cond), r"\[B, T, A\]"),
        ((z, t[:, None], h, cond), "t must have shape"),
        ((z, t, h[:1], cond), "h must have shape"),
        ((z, t, h, FlowerCond(arr(2, 5, 7), cond.frequency_embeds)), "token feature dim"),
        ((z, t, h, FlowerCond(arr(2, 7), cond.frequency_embeds)), "cond.tokens"),
        ((z, t, h, FlowerCond(cond.tokens, arr(2, 1, cfg.dit_dim))), "frequency_embeds"),
        ((z, t, h, FlowerCond(cond.tokens, cond.frequency_embeds, arr(2, 5))), "use_proprio"),
        ((z, t.astype(jnp.float32), h, cond), "dtype"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            u_fn(*args)


def test_config_errors():
    with pytest.raises(ValueError, match="position_mode"):
        FlowerConfig(position_mode="sincos")
    with pytest.raises(ValueError, match="h_placement"):
        FlowerConfig(h_placement="input")
    with pytest.raises(ValueError, match="n_heads"):
        FlowerConfig(dit_dim=30, n_heads=4)
    with pytest.raises(ValueError, match="query_seq_len"):
        FlowerConfig(act_window_size=200)
    assert FlowerConfig().decoder_hidden == 2048
