"""meanflow_common/tables.py against the defining formulas, computed here element by element
with Python's math module, and the tables the models actually hold.

Definitions (the DiT and FLOWER references):
- DiT time embedding: f_k = exp(-ln(10000) k / half), k < half = dim / 2;
- MAE 2-D sin-cos positions: token i * G + j (row i, column j); channels [0, D/2) encode the
  column j and [D/2, D) the row i, each as sin(p w_d) then cos(p w_d), w_d = 10000^(-d / (D/4));
- FLOWER's TimestepEmbedder: 1000 exp(-ln(10000) k / half); its FreqEmbedder: exp(-ln(1000) k / half);
- RoPE: f_k = theta^(-2k / head_dim), theta 32 (FLOWER), tables cos / sin of position * f_k.
"""
import math

import numpy as np
import pytest
from meanflow_common import tables
from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS


def _freqs(dim, max_period, scale=1.0):
    half = dim // 2
    return np.array([scale * math.exp(-math.log(max_period) * k / half) for k in range(half)])


def _pos_embed(d, g):
    out = np.zeros((g * g, d))
    q = d // 4
    for i in range(g):
        for j in range(g):
            for c in range(q):
                w = 10000.0 ** (-c / q)
                out[i * g + j, c], out[i * g + j, q + c] = math.sin(j * w), math.cos(j * w)
                out[i * g + j, 2 * q + c], out[i * g + j, 3 * q + c] = math.sin(i * w), math.cos(i * w)
    return out


def _rope(head_dim, seq_len, theta):
    f = [theta ** (-2 * k / head_dim) for k in range(head_dim // 2)]
    cos = np.array([[math.cos(p * fk) for fk in f] for p in range(seq_len)])
    sin = np.array([[math.sin(p * fk) for fk in f] for p in range(seq_len)])
    return np.array(f), cos, sin


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=1e-13, atol=1e-13)  # angles up to ~100 rad: ulps of the argument


@pytest.mark.parametrize("dim", [256, 32])
def test_time_frequency_tables(dim):
    _close(tables.timestep_frequencies(dim), _freqs(dim, 10000.0))
    _close(tables.flower_timestep_frequencies(dim), _freqs(dim, 10000.0, 1000.0))
    _close(tables.flower_control_frequencies(dim), _freqs(dim, 1000.0))


@pytest.mark.parametrize("d, g", [(64, 4), (128, 4), (768, 8)])
def test_sincos_2d_position_table(d, g):
    _close(tables.sincos_2d_pos_embed(d, g), _pos_embed(d, g))


@pytest.mark.parametrize("head_dim, seq_len", [(16, 4), (64, 100)])
def test_rope_tables(head_dim, seq_len):
    f, cos, sin = _rope(head_dim, seq_len, 32.0)
    _close(tables.rope_frequencies(head_dim), f)
    got_cos, got_sin = tables.rope_cos_sin(head_dim, seq_len)
    _close(got_cos, cos)
    _close(got_sin, sin)


def test_the_models_hold_these_tables():
    """The defaults the models pass (max periods, the x1000 scale, theta 32, grid size)."""
    from torch_meanflow.dit import DiT
    from torch_meanflow.flower import FlowerTransformer

    dit_cfg = DIT_PRESETS["tiny"]
    dit = DiT(dit_cfg)
    _close(dit.t_embedder.table("freqs"), _freqs(dit_cfg.frequency_embedding_size, 10000.0))
    _close(dit.table("pos_embed")[0], _pos_embed(dit_cfg.hidden_size, dit_cfg.input_size // dit_cfg.patch_size))
    cfg = FLOWER_PRESETS["tiny"]
    assert cfg.rope_theta == 32.0 and FLOWER_PRESETS["default"].time_scale == 1000.0
    flower = FlowerTransformer(cfg)
    fes = cfg.frequency_embedding_size
    _close(flower.t_embedder.table("freqs"), _freqs(fes, 10000.0, cfg.time_scale))
    _close(flower.frequency_embedder.table("freqs"), _freqs(fes, 1000.0))
    _, cos, sin = _rope(cfg.dit_dim // cfg.n_heads, cfg.act_window_size, 32.0)
    _close(flower.table("rope_cos"), cos)
    _close(flower.table("rope_sin"), sin)


@pytest.mark.parametrize("wrong", ["max_period 1000", "no x1000", "sin first", "axes swapped", "theta 10000"])
def test_a_wrong_formula_fails(wrong):
    """The independent formulas tell the tables from plausible mistakes."""
    if wrong == "max_period 1000":
        got, want = tables.timestep_frequencies(256, max_period=1000.0), _freqs(256, 10000.0)
    elif wrong == "no x1000":
        got, want = tables.flower_timestep_frequencies(256, scale=1.0), _freqs(256, 10000.0, 1000.0)
    elif wrong == "sin first":
        pe = tables.sincos_2d_pos_embed(64, 4)
        got, want = np.concatenate([pe[:, 16:32], pe[:, :16], pe[:, 48:], pe[:, 32:48]], 1), _pos_embed(64, 4)
    elif wrong == "axes swapped":
        pe = tables.sincos_2d_pos_embed(64, 4)
        got, want = np.concatenate([pe[:, 32:], pe[:, :32]], 1), _pos_embed(64, 4)
    else:
        got, want = tables.rope_frequencies(16, theta=10000.0), _rope(16, 4, 32.0)[0]
    with pytest.raises(AssertionError):
        _close(got, want)
