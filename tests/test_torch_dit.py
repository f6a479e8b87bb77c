"""torch DiT: state-dict names, initialisation, input checks, and the project's tangent rules on
the whole network against torch.func.jvp."""
import numpy as np
import pytest
import torch

from meanflow_common.config import DIT_PRESETS
from meanflow_common.tables import sincos_2d_pos_embed
from torch_meanflow.dit import DiT, init_dit, make_u_fn
from torch_meanflow.params import count_params, randomize_params

CFG = DIT_PRESETS["tiny"]  # 8x8x4, patch 2, D 64, depth 2, 10 classes
B = 3


@pytest.fixture(scope="module")
def model():
    return randomize_params(init_dit(CFG, seed=0, dtype=torch.float64), seed=1)


def _inputs(seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((B, CFG.in_channels, CFG.input_size, CFG.input_size))).to(dtype)
    t = torch.from_numpy(rng.uniform(0.2, 0.9, B)).to(dtype)
    r = t * torch.from_numpy(rng.uniform(0.0, 1.0, B)).to(dtype)
    y = torch.tensor([0, 7, CFG.num_classes])  # the last one is the null class
    return x, t, r, y


def test_state_dict_names_follow_facebookresearch_dit():
    sd = DiT(CFG).state_dict()
    d, p, c = CFG.hidden_size, CFG.patch_size, CFG.in_channels
    expected = {
        "x_embedder.proj.weight": (d, c, p, p),
        "t_embedder.mlp.0.weight": (d, CFG.frequency_embedding_size),
        "t_embedder.mlp.2.bias": (d,),
        "h_embedder.mlp.2.weight": (d, d),
        "y_embedder.embedding_table.weight": (CFG.num_classes + 1, d),
        "blocks.1.attn.qkv.weight": (3 * d, d),
        "blocks.1.attn.proj.bias": (d,),
        "blocks.0.mlp.fc1.weight": (4 * d, d),
        "blocks.0.adaLN_modulation.1.weight": (6 * d, d),
        "final_layer.linear.weight": (p * p * c, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "pos_embed" not in sd  # fixed table, non-persistent
    assert len(sd) == 3 + 2 * 4 + CFG.depth * 10 + 4


def test_reference_initialisation():
    m = init_dit(CFG, seed=0, dtype=torch.float64)
    zero = [m.final_layer.linear, m.final_layer.adaLN_modulation[1]] + [b.adaLN_modulation[1] for b in m.blocks]
    assert all(not layer.weight.any() and not layer.bias.any() for layer in zero)
    assert 0.01 < m.y_embedder.embedding_table.weight.std().item() < 0.03
    assert 0.01 < m.t_embedder.mlp[0].weight.std().item() < 0.03
    w = m.blocks[0].attn.qkv.weight  # xavier-uniform bound sqrt(6 / (fan_in + fan_out))
    assert w.abs().max().item() <= (6 / sum(w.shape)) ** 0.5 and not m.blocks[0].attn.qkv.bias.any()
    assert torch.equal(init_dit(CFG, seed=0).x_embedder.proj.weight, init_dit(CFG, seed=0).x_embedder.proj.weight)
    x, t, r, y = _inputs()
    assert not make_u_fn(m)(x, t, t - r, y).any()  # the zero layers make u == 0: tests randomise


def test_randomize_params_every_parameter(model):
    fresh = init_dit(CFG, seed=0, dtype=torch.float64).state_dict()
    state = torch.get_rng_state()
    again = randomize_params(init_dit(CFG, seed=0, dtype=torch.float64), seed=1).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float64 and not torch.allclose(v, fresh[k]), k
        assert torch.equal(v, again[k])
    assert count_params(model) == sum(v.numel() for v in fresh.values())


def test_pos_embed_is_the_float64_table_after_casts():
    m = DiT(CFG).float().double()
    table = sincos_2d_pos_embed(CFG.hidden_size, CFG.input_size // CFG.patch_size)
    assert m.pos_embed.dtype == torch.float64
    np.testing.assert_array_equal(m.pos_embed[0].numpy(), table)


def test_output_shape_dtype_and_nontrivial(model):
    x, t, r, y = _inputs()
    with torch.no_grad():
        u = make_u_fn(model)(x, t, t - r, y)
        assert u.shape == x.shape and u.dtype == torch.float64
        assert 0.1 < u.std().item() < 10.0
        m32 = randomize_params(init_dit(CFG, seed=0, dtype=torch.float32), seed=1)
        u32 = m32(x.float(), t.float(), (t - r).float(), y)
    assert u32.dtype == torch.float32
    assert (u32.double() - u).abs().max().item() < 1e-4 * u.abs().max().item()


def test_rules_engine_matches_torch_func_on_the_dit(model, monkeypatch):
    """The objective on the DiT under the project's tangent rules equals plain torch.func.jvp
    (u, du/dt, the loss and every gradient, float64); a wrong LayerNorm rule is seen."""
    from meanflow_common.config import MeanFlowConfig
    from torch_meanflow import jvp_rules
    from torch_meanflow.objective import jvp_engine, meanflow_loss, sample_noise

    x, _, _, y = _inputs(seed=5)
    cfg = MeanFlowConfig(data_proportion=0.34, class_dropout_prob=0.34)
    noise = sample_noise(tuple(x.shape), cfg, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = y.clamp(max=CFG.num_classes - 1)

    def run(engine):
        model.zero_grad(set_to_none=True)
        with jvp_engine(engine):
            out = meanflow_loss(make_u_fn(model), x, y, noise, cfg, null_y=CFG.num_classes)
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    (ref, g_ref), (got, g_got) = run("torch.func"), run("rules")
    for name in ("u", "du_dt", "u_tgt", "loss"):
        a, b = getattr(ref, name), getattr(got, name)
        assert (a - b).abs().max() <= 1e-12 * a.abs().max(), name
    for n in g_ref:
        assert (g_ref[n] - g_got[n]).abs().max() <= 1e-12 * max(g_ref[n].abs().max(), 1e-30), n
    assert ref.du_dt.abs().max() > 0.1
    # The check can fail: a LayerNorm tangent off by 1%.
    import torch.autograd.forward_ad as fwAD

    right = jvp_rules.RULES[torch.nn.functional.layer_norm]

    def off(func, args, kwargs):
        primal, tangent = fwAD.unpack_dual(right(func, args, kwargs))
        return fwAD.make_dual(primal, 1.01 * tangent)

    monkeypatch.setitem(jvp_rules.RULES, torch.nn.functional.layer_norm, off)
    bad, _ = run("rules")
    assert (bad.du_dt - ref.du_dt).abs().max() > 1e-6 * ref.du_dt.abs().max()


def test_rejects_nhwc_and_bad_shapes(model):
    x, t, r, y = _inputs()
    with pytest.raises(ValueError, match="NHWC"):
        model(x.permute(0, 2, 3, 1), t, t - r, y)
    with pytest.raises(ValueError, match="spatial size"):
        model(x[..., :6, :6], t, t - r, y)
    with pytest.raises(ValueError, match="expected in_channels"):
        model(x[:, :3], t, t - r, y)
    with pytest.raises(TypeError, match="dtype"):
        model(x.float(), t, t - r, y)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        model(x, t[:, None], t - r, y)
    with pytest.raises(ValueError, match=r"h must have shape \[B\]"):
        model(x, t, (t - r)[:2], y)


def test_rejects_bad_labels(model):
    x, t, r, y = _inputs()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\]"):
        model(x, t, t - r, torch.tensor([0, CFG.num_classes + 1, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        model(x, t, t - r, torch.tensor([-1, 0, 1]))
    with pytest.raises(TypeError, match="integers"):
        model(x, t, t - r, y.double())
