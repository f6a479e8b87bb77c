"""FLOWER's flow transformer in PyTorch: shapes, the MeanFlow total derivative through
torch.func.jvp, causality, dropout under JVP and input validation. Every check runs on
randomised parameters (the zero-init controller would otherwise hide most of the network)."""
import numpy as np
import pytest
import torch

from meanflow_common.config import FLOWER_PRESETS, override
from torch_meanflow.flower import FlowerCond, init_flower, make_u_fn
from torch_meanflow.params import randomize_params

VARIANTS = [
    ("adaln", "rope"),
    ("adaln", "learned"),
    ("decoder", "rope"),
    ("decoder", "learned"),
]


def _config(h_placement="adaln", position_mode="rope", **kw):
    return override(FLOWER_PRESETS["tiny"], dict(h_placement=h_placement, position_mode=position_mode, **kw))


def _setup(cfg, dtype=torch.float64, batch=3, seed=0):
    model = init_flower(cfg, seed, dtype)
    randomize_params(model, seed=seed + 1)
    rng = np.random.default_rng(seed + 2)

    def arr(*shape):
        return torch.as_tensor(rng.normal(size=shape), dtype=dtype)

    z = arr(batch, cfg.act_window_size, cfg.action_dim)
    t = torch.as_tensor(rng.uniform(0.2, 0.9, size=batch), dtype=dtype)
    r = t * torch.as_tensor(rng.uniform(0.0, 0.8, size=batch), dtype=dtype)
    proprio = arr(batch, cfg.proprio_dim) if cfg.use_proprio else None
    cond = FlowerCond(arr(batch, 5, cfg.cond_dim), arr(batch, cfg.dit_dim), proprio)
    return model, z, t, r, cond, arr


def _jvp_and_fd(f, z, t, r, v, eps=2e-6, z_tangent=True):
    """f(z, t, r) -> u; returns (JVP along (v, 1, 0), five-point central difference).

    FLOWER's time features oscillate like cos(1000 t): the two-point formula's
    eps^2 f'''/6 error would be ~1e-2 relative, the five-point one is ~1e-9.
    """
    tz = v if z_tangent else torch.zeros_like(v)
    _, du = torch.func.jvp(f, (z, t, r), (tz, torch.ones_like(t), torch.zeros_like(r)))

    def at(s):
        return f(z + s * eps * v, t + s * eps, r)

    return du, (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * eps)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("h_placement,position_mode", VARIANTS)
def test_du_dt_is_the_total_derivative(h_placement, position_mode):
    cfg = _config(h_placement, position_mode)
    model, z, t, r, cond, arr = _setup(cfg)
    u_fn = make_u_fn(model)
    with torch.no_grad():
        du, fd = _jvp_and_fd(lambda z, t, r: u_fn(z, t, t - r, cond), z, t, r, arr(*z.shape))
    assert float(du.abs().max()) > 1e-3
    assert _rel(du, fd) < 1e-6


def test_partial_derivative_fails_the_same_check():
    cfg = _config()
    model, z, t, r, cond, arr = _setup(cfg)
    u_fn = make_u_fn(model)
    with torch.no_grad():
        du, fd = _jvp_and_fd(lambda z, t, r: u_fn(z, t, t - r, cond), z, t, r, arr(*z.shape), z_tangent=False)
    # d/dt dominates (x1000 time features): the missing z part is ~1e-3 of du/dt here
    assert _rel(du, fd) > 1e-4


@pytest.mark.parametrize("h_placement", ["adaln", "decoder"])
def test_shapes_dtypes_and_h_dependence(h_placement):
    for dtype in (torch.float32, torch.float64):
        cfg = _config(h_placement, use_proprio=True)
        model, z, t, r, cond, _ = _setup(cfg, dtype)
        with torch.no_grad():
            u = model(z, t, t - r, cond)
            assert u.shape == z.shape and u.dtype == dtype
            assert float((u - model(z, t, torch.zeros_like(t), cond)).abs().max()) > 1e-4
            freq = model.embed_frequency(torch.full((3,), 3.0, dtype=dtype))
        assert freq.shape == (3, cfg.dit_dim) and freq.dtype == dtype


def test_init_names_and_zero_controller():
    cfg = _config("decoder", "learned", use_proprio=True)
    model = init_flower(cfg, 0, torch.float64)
    sd = model.state_dict()
    assert not sd["adaln.eef_delta.modCX.1.weight"].any()
    assert sd["adaln.eef_delta.modCX.1.weight"].shape == (9 * cfg.dit_dim, cfg.dit_dim)
    for name in ("frequency_embedder.mlp.0.weight", "positional_encoding", "proprio_encoders.eef_delta.fc1.weight",
                 "action_decoders.eef_delta.decoder.4.weight", "action_decoders.eef_delta.h_embedder.mlp.2.bias",
                 "cond_norm.weight", "dit.1.self_attn.qkv.weight", "dit.1.cross_attn.k_norm.weight"):
        assert name in sd, name
    assert not any(k.startswith("h_embedder.") for k in sd)
    assert all(v.dtype == torch.float64 for v in sd.values())
    # seeding does not disturb the global RNG and is reproducible
    state = torch.get_rng_state()
    again = init_flower(cfg, 0, torch.float64).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(sd[k], again[k]) for k in sd)


def test_self_attention_is_causal():
    cfg = _config()
    model, z, t, r, cond, _ = _setup(cfg)
    z2 = z.clone()
    z2[:, -1] += 1.0
    with torch.no_grad():
        u1, u2 = model(z, t, t - r, cond), model(z2, t, t - r, cond)
    assert torch.equal(u1[:, :-1], u2[:, :-1])
    assert float((u1[:, -1] - u2[:, -1]).abs().max()) > 1e-4


def test_dropout_is_one_mask_under_jvp():
    """In train mode, the JVP tangent equals a finite difference of the same dropped-out
    function (the RNG state fixed around every call), so primal and tangent share a mask."""
    cfg = _config(attn_pdrop=0.3, resid_pdrop=0.3, mlp_pdrop=0.3)
    model, z, t, r, cond, arr = _setup(cfg)

    def f(z, t, r):
        torch.manual_seed(1234)
        return model(z, t, t - r, cond, train=True)

    with torch.no_grad():
        a, b = f(z, t, r), f(z, t, r)
        assert torch.equal(a, b)
        assert float((a - model(z, t, t - r, cond)).abs().max()) > 1e-4
        primal, _ = torch.func.jvp(f, (z, t, r), (z, torch.ones_like(t), torch.zeros_like(r)))
        assert torch.equal(primal, a)
        du, fd = _jvp_and_fd(f, z, t, r, arr(*z.shape))
    assert _rel(du, fd) < 1e-6


def test_gradients_reach_every_parameter():
    cfg = _config("decoder", "learned", use_proprio=True)
    model, z, t, r, cond, _ = _setup(cfg)
    cond = FlowerCond(cond.tokens, model.embed_frequency(torch.full((3,), 3.0, dtype=z.dtype)), cond.proprio)
    model(z, t, t - r, cond).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_bad_inputs_are_named():
    cfg = _config()
    model, z, t, r, cond, arr = _setup(cfg, batch=2)
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
        ((z.float(), t, h, cond), "dtype"),
    ]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            model(*args)


def test_no_position_encoding_mode():
    """FLOWER's use_nope: no table, no RoPE; order comes from the causal mask alone."""
    cfg = _config("adaln", "none")
    model, z, t, r, cond, _ = _setup(cfg)
    assert "positional_encoding" not in model.state_dict()
    with torch.no_grad():
        u = model(z, t, t - r, cond)
        assert u.shape == z.shape
        rope = init_flower(_config("adaln", "rope"), 0, torch.float64)
        rope.load_state_dict(model.state_dict())
        assert float((u - rope(z, t, t - r, cond)).abs().max()) > 1e-6
