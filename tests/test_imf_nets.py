"""iMF / pMF networks: official parameter names, conversion, and JAX-torch agreement."""
from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_meanflow import imf_dit as jimf, pmf_dit as jpmf
from meanflow_common.imf_config import IMF_PRESETS, PMF_PRESETS, IMFDiTConfig, PMFDiTConfig
from parity.convert.engine import ConversionError, ConversionShapeError, jax_to_torch, torch_to_jax, unflatten_tree
from parity.convert.tables.imf_dit import TABLE as IMF_TABLE
from parity.convert.tables.pmf_dit import TABLE as PMF_TABLE
from torch_meanflow import imf_dit as timf, pmf_dit as tpmf

# ---- the official names, as literal data (tiny config: D 32, head dim 16, SwiGLU 85, 16 frequencies) ----
D, F, M = 32, 16, 85
BLOCK_JAX = {"norm1/kernel": (D,), "norm2/kernel": (D,), "attn_scale": (D,), "mlp_scale": (D,),
             "attn/q_norm/kernel": (16,), "attn/k_norm/kernel": (16,),
             "attn/q_proj/_flax_linear/kernel": (D, D), "attn/k_proj/_flax_linear/kernel": (D, D),
             "attn/v_proj/_flax_linear/kernel": (D, D), "attn/out_proj/_flax_linear/kernel": (D, D),
             "mlp/w1/_flax_linear/kernel": (D, M), "mlp/w3/_flax_linear/kernel": (D, M),
             "mlp/w2/_flax_linear/kernel": (M, D)}
BLOCK_TORCH = ["norm1.weight", "norm2.weight", "attn_scale", "mlp_scale", "attn.q_norm.weight", "attn.k_norm.weight",
               "attn.q_proj._flax_linear.weight", "attn.k_proj._flax_linear.weight", "attn.v_proj._flax_linear.weight",
               "attn.out_proj._flax_linear.weight", "mlp.w1._flax_linear.weight", "mlp.w3._flax_linear.weight",
               "mlp.w2._flax_linear.weight"]
EMBEDDERS = ["h_embedder", "omega_embedder", "cfg_t_start_embedder", "cfg_t_end_embedder"]


def official_jax_keys(pixel: bool, eval_: bool) -> dict:
    lead = (1,) if pixel else ()
    k = {"class_tokens": lead + (2, D), "omega_tokens": lead + (2, D), "t_min_tokens": lead + (1, D),
         "t_max_tokens": lead + (1, D), "time_tokens": lead + (2, D)}
    for e in EMBEDDERS:
        k |= {f"{e}/mlp/layers_0/_flax_linear/kernel": (F, D), f"{e}/mlp/layers_0/_flax_linear/bias": (D,),
              f"{e}/mlp/layers_2/_flax_linear/kernel": (D, D), f"{e}/mlp/layers_2/_flax_linear/bias": (D,)}
    for stack, n in (("shared_blocks", 2), ("u_heads", 1), ("v_heads", 0 if eval_ else 1)):
        k |= {f"{stack}_{i}/{s}": shape for i in range(n) for s, shape in BLOCK_JAX.items()}
    out = 48 if pixel else 16
    for fin in ("u_final_layer", "v_final_layer")[: 1 if (pixel and eval_) else 2]:
        k |= {f"{fin}/norm/kernel": (D,), f"{fin}/linear/_flax_linear/kernel": (D, out),
              f"{fin}/linear/_flax_linear/bias": (out,)}
    if pixel:
        k |= {"x_embedder/proj1/kernel": (4, 4, 3, 6), "x_embedder/proj1/bias": (6,),
              "x_embedder/proj2/kernel": (1, 1, 6, D), "x_embedder/proj2/bias": (D,),
              "y_embedder/embedding_table/embedding": (1, 6, D), "pos_embed": (1, 12, D)}
    else:
        k |= {"x_embedder/proj/kernel": (2, 2, 4, D), "x_embedder/proj/bias": (D,),
              "y_embedder/embedding_table/_flax_embedding/embedding": (6, D)}
    return k


def official_torch_keys(pixel: bool, eval_: bool) -> set:
    k = {"class_tokens", "omega_tokens", "t_min_tokens", "t_max_tokens", "time_tokens",
         "y_embedder.embedding_table._flax_embedding.weight"}
    k |= {f"{e}.mlp.{i}._flax_linear.{w}" for e in EMBEDDERS for i in (0, 2) for w in ("weight", "bias")}
    for stack, n in (("shared_blocks", 2), ("u_heads", 1), ("v_heads", 0 if eval_ else 1)):
        k |= {f"{stack}.{i}.{s}" for i in range(n) for s in BLOCK_TORCH}
    for fin in ("u_final_layer", "v_final_layer")[: 1 if (pixel and eval_) else 2]:
        k |= {f"{fin}.norm.weight", f"{fin}.linear._flax_linear.weight", f"{fin}.linear._flax_linear.bias"}
    convs = ("proj1", "proj2") if pixel else ("proj",)
    k |= {f"x_embedder.{c}.{w}" for c in convs for w in ("weight", "bias")}
    return k | ({"pos_embed"} if pixel else set())


CASES = [pytest.param(False, False, id="imf"), pytest.param(False, True, id="imf-eval"),
         pytest.param(True, False, id="pmf"), pytest.param(True, True, id="pmf-eval")]


def build(pixel, eval_):
    cfg = replace((PMF_PRESETS if pixel else IMF_PRESETS)["tiny"], eval=eval_)
    jm = (jpmf.PMFDiT if pixel else jimf.IMFDiT)(cfg)
    torch.manual_seed(0)
    tm = (tpmf.PMFDiT if pixel else timf.IMFDiT)(cfg).double()
    return cfg, jm, tm, (PMF_TABLE if pixel else IMF_TABLE)


def random_tree(shapes: dict, seed: int) -> dict:
    """Every leaf random (gates and final layers included), float64."""
    rng = np.random.default_rng(seed)
    return unflatten_tree({k: rng.normal(0.0, 0.4, s) for k, s in sorted(shapes.items())})


def inputs(cfg, seed=1, b=3):
    rng = np.random.default_rng(seed)
    s = cfg.input_size
    z = rng.normal(size=(b, s, s, cfg.in_channels))
    t = rng.uniform(0.02, 1.0, b)
    h = t * rng.uniform(0, 1, b)
    omega = rng.uniform(1, 8, b)
    tmin, tmax = rng.uniform(0, 0.5, b), rng.uniform(0.5, 1, b)
    y = np.array([0, cfg.num_classes, 2][:b])
    return z, t, h, omega, tmin, tmax, y


def run_jax(jm, params, args):
    z, *rest, y = args
    return [np.asarray(a) for a in jimf.make_net_fn(jm, params)(jnp.asarray(z), *map(jnp.asarray, rest),
                                                              jnp.asarray(y, jnp.int32))]


def torch_args(args):
    z, *rest, y = args
    return (torch.tensor(z.transpose(0, 3, 1, 2)), *map(torch.tensor, rest), torch.tensor(y))


def run_torch(tm, args):
    with torch.no_grad():
        return [o.numpy().transpose(0, 2, 3, 1) for o in tm(*torch_args(args))]


def loaded(pixel, eval_, seed=3):
    cfg, jm, tm, table = build(pixel, eval_)
    params = random_tree(jimf.param_shapes(jm), seed)
    params = jimf.load_official_params(jm, {"net": params})
    timf.load_official_state_dict(tm, {f"net.{k}": torch.tensor(v) for k, v in jax_to_torch(params, table, cfg).items()})
    return cfg, jm, tm, params


def rel(a, b):
    return max(np.abs(x - y).max() / np.abs(x).max() for x, y in zip(a, b))


@pytest.mark.parametrize("pixel,eval_", CASES)
def test_official_names(pixel, eval_):
    cfg, jm, tm, table = build(pixel, eval_)
    assert jimf.param_shapes(jm) == official_jax_keys(pixel, eval_)
    assert set(tm.state_dict()) == official_torch_keys(pixel, eval_)


@pytest.mark.parametrize("pixel,eval_", CASES)
def test_convert_bit_exact_both_ways(pixel, eval_):
    cfg, jm, tm, table = build(pixel, eval_)
    params = random_tree(jimf.param_shapes(jm), 5)
    sd = jax_to_torch(params, table, cfg, template=tm.state_dict())
    tm.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=True)
    back = torch_to_jax(tm.state_dict(), table, cfg, template=params)
    for k, v in jax.tree_util.tree_flatten_with_path(params)[0]:
        got = back
        for p in k:
            got = got[p.key]
        np.testing.assert_array_equal(got, v)


def test_fresh_weights_are_identity():
    for pixel in (False, True):
        cfg, jm, tm, _ = build(pixel, False)
        params = jimf.init_params(jm, jax.random.PRNGKey(0), jnp.float64)
        args = inputs(cfg)
        tc = np.clip(args[1], 0.05, 1)[:, None, None, None]
        want = args[0] / tc if pixel else np.zeros_like(args[0])
        for out in run_jax(jm, params, args) + run_torch(tm, args):
            np.testing.assert_allclose(out, want, atol=1e-12)


@pytest.mark.parametrize("pixel,eval_", CASES)
def test_forward_agrees_float64(pixel, eval_):
    cfg, jm, tm, params = loaded(pixel, eval_)
    args = inputs(cfg)
    ju, jv = run_jax(jm, params, args)
    tu, tv = run_torch(tm, args)
    assert np.abs(ju).max() > 1e-3 and np.abs(jv).max() > 1e-3
    assert rel((ju, jv), (tu, tv)) < 1e-12


@pytest.mark.parametrize("pixel", [False, True], ids=["imf", "pmf"])
def test_jvp_agrees_float64(pixel):
    cfg, jm, tm, params = loaded(pixel, False)
    z, t, h, omega, tmin, tmax, y = inputs(cfg)
    dz = np.random.default_rng(9).normal(size=z.shape)
    yj = jnp.asarray(y, jnp.int32)

    def jf(z_, t_, h_):
        return jm.apply({"params": params}, z_, t_, h_, jnp.asarray(omega), jnp.asarray(tmin), jnp.asarray(tmax), yj)

    prim = tuple(map(jnp.asarray, (z, t, h)))
    tang = (jnp.asarray(dz), jnp.ones_like(prim[1]), jnp.ones_like(prim[2]))
    (ju, jv), (dju, djv) = jax.jit(lambda p_, t_: jax.jvp(jf, p_, t_))(prim, tang)
    tz, tt, th, to, tmn, tmx, ty = torch_args((z, t, h, omega, tmin, tmax, y))

    def tf(z_, t_, h_):
        return tm(z_, t_, h_, to, tmn, tmx, ty)

    (tu, tv), (dtu, dtv) = torch.func.jvp(tf, (tz, tt, th), (torch.tensor(dz.transpose(0, 3, 1, 2)),
                                                              torch.ones_like(tt), torch.ones_like(th)))
    nh = [a.detach().numpy().transpose(0, 2, 3, 1) for a in (tu, tv, dtu, dtv)]
    assert np.abs(np.asarray(dju)).max() > 1e-3
    assert rel([np.asarray(a) for a in (ju, jv, dju, djv)], nh) < 1e-11


def _bad_rotate(x, cos, sin):
    return _good_rotate(x, cos, -sin)


from torch_meanflow import imf_layers as _tl  # noqa: E402

_good_rotate = _tl.rotate


class _OmegaBug(timf.IMFDiT):
    def _sequence(self, z, h, omega, t_min, t_max, y):  # feeds omega instead of 1 - 1/omega
        return super()._sequence(z, h, 1 / (1 - omega), t_min, t_max, y)


@pytest.mark.parametrize("bug", ["rope_reversed", "no_qk_norm", "omega_token"])
def test_negative_controls_are_caught(bug, monkeypatch):
    cfg, jm, tm, params = loaded(False, False)
    if bug == "rope_reversed":
        monkeypatch.setattr(_tl, "rotate", _bad_rotate)
    elif bug == "no_qk_norm":
        for blk in list(tm.shared_blocks) + list(tm.u_heads) + list(tm.v_heads):
            blk.attn.q_norm = torch.nn.Identity()
            blk.attn.k_norm = torch.nn.Identity()
    else:
        bad = _OmegaBug(cfg).double()
        bad.load_state_dict(tm.state_dict())
        tm = bad
    args = inputs(cfg)
    assert rel(run_jax(jm, params, args), run_torch(tm, args)) > 1e-4


def test_bad_inputs():
    cfg, jm, tm, params = loaded(False, False)
    z, *rest, y = inputs(cfg)
    net = jimf.make_net_fn(jm, params)
    with pytest.raises(ValueError, match="NCHW"):
        net(jnp.asarray(z.transpose(0, 3, 1, 2)), *map(jnp.asarray, rest), jnp.asarray(y))
    with pytest.raises(TypeError, match="integers"):
        net(jnp.asarray(z), *map(jnp.asarray, rest), jnp.asarray(y, jnp.float64))
    with pytest.raises(ValueError, match="omega must have shape"):
        net(jnp.asarray(z), *map(jnp.asarray, rest[:2]), jnp.ones(2), *map(jnp.asarray, rest[3:]), jnp.asarray(y))
    targs = list(torch_args((z, *rest, y)))
    with pytest.raises(ValueError, match="NHWC"):
        tm(torch.tensor(z), *targs[1:])
    with pytest.raises(TypeError, match="dtype"):
        tm(targs[0].float(), *targs[1:])
    with pytest.raises(ValueError, match="labels must lie"):
        tm(*targs[:-1], torch.tensor([0, 1, 99]))
    sd = dict(tm.state_dict())
    sd["u_heads.0.attn.q_norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="u_heads.0.attn.q_norm.weight"):
        timf.load_official_state_dict(tm, sd)
    flat = jax_to_torch(params, IMF_TABLE, cfg)
    flat["time_tokens"] = np.zeros((3, D))
    with pytest.raises(ConversionShapeError, match="time_tokens"):
        torch_to_jax(flat, IMF_TABLE, cfg, template=params)
    tree = jax.tree_util.tree_map(np.asarray, params)
    tree["u_heads_0"]["mlp_scale"] = np.zeros(5)
    with pytest.raises(ValueError, match="u_heads_0/mlp_scale"):
        jimf.load_official_params(jm, tree)
    del tree["u_heads_0"]
    with pytest.raises(ConversionError, match="u_heads_0"):
        jax_to_torch(tree, IMF_TABLE, cfg)


def test_pmf_official_rope_buffer_accepted_and_label_table_shape_checked():
    cfg, jm, tm, params = loaded(True, True)
    sd = {f"net.{k}": v for k, v in tm.state_dict().items()}
    sd["net.rope_freqs"] = torch.zeros(cfg.num_patches, cfg.head_dim // 2, dtype=torch.complex64)
    tpmf.load_official_state_dict(tm, sd)
    tree = jax.tree_util.tree_map(np.asarray, params)
    tree["y_embedder"]["embedding_table"]["embedding"] = np.zeros((2, 6, D))
    with pytest.raises(ConversionShapeError, match="y_embedder/embedding_table/embedding"):
        jax_to_torch(tree, PMF_TABLE, cfg)


def test_config_validation_and_presets():
    assert IMF_PRESETS["XL/2"].depth == 48 and IMF_PRESETS["L/2"].num_heads == 16
    assert PMF_PRESETS["H/16"].pca_channels == 256 and PMF_PRESETS["B/32"].input_size == 512
    with pytest.raises(ValueError, match="divisible by num_heads"):
        IMFDiTConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="aux_head_depth"):
        IMFDiTConfig(depth=8, aux_head_depth=8)
    with pytest.raises(ValueError, match="input_size"):
        PMFDiTConfig(input_size=250)
