"""Both backends' (t, r) samplers reproduce the references' formulas on the very draws they made.

The formulas (written out in `_expected`, NumPy float64), from the references' definitions:
JAX "first": t, r = max, min, the first floor(B p) get r = t; py-meanflow v0: max/min then
r = t on the masked samples; v1: r = t on the masked samples, then r = min(t, r), t keeping
its own draw; t and r from logit-normal(P_mean_t, P_std_t) and (P_mean_r, P_std_r).
Each backend's raw draws are reproduced from the same generator state in the order the
sampler documents (torch: t normals, r normals, coins; JAX: split(key, 3)).
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_meanflow.objective as jobj
import torch_meanflow.objective as tobj
from meanflow_common.config import MeanFlowConfig, from_dict, override, to_dict
from parity.checks import samplers as sampler_check
from parity.core import sampler_oracle as oracle

jax.config.update("jax_enable_x64", True)

PYM = dict(P_mean_t=-0.6, P_std_t=1.6, P_mean_r=-4.0, P_std_r=1.6)
CONFIGS = {
    "first default": MeanFlowConfig(),
    "first p=0.5 own t/r": MeanFlowConfig(data_proportion=0.5, **PYM),
    "v0 default": MeanFlowConfig(rt_mask="random", tr_sampler="v0"),
    "v1 default": MeanFlowConfig(rt_mask="random", tr_sampler="v1"),
    "v0 py-meanflow": MeanFlowConfig(rt_mask="random", tr_sampler="v0", **PYM),
    "v1 py-meanflow": MeanFlowConfig(rt_mask="random", tr_sampler="v1", **PYM),
    "v1 uniform": MeanFlowConfig(rt_mask="random", tr_sampler="v1", noise_dist="uniform"),
    "first uniform": MeanFlowConfig(noise_dist="uniform", data_proportion=0.3),
}
N = 10000


def _torch_raw(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    draw = torch.randn if cfg.noise_dist == "logit_normal" else torch.rand
    a = draw(N, generator=g, dtype=torch.float64).numpy()
    b = draw(N, generator=g, dtype=torch.float64).numpy()
    coins = torch.rand(N, generator=g, dtype=torch.float64).numpy()
    return a, b, coins


def _jax_raw(cfg, seed):
    k_t, k_r, k_m = jax.random.split(jax.random.PRNGKey(seed), 3)
    draw = jax.random.normal if cfg.noise_dist == "logit_normal" else jax.random.uniform
    a, b = (np.asarray(draw(k, (N,), dtype=jnp.float64)) for k in (k_t, k_r))
    return a, b, np.asarray(jax.random.uniform(k_m, (N,), dtype=jnp.float64))


def _expected(cfg, a, b, coins):
    """The formulas, written out here from the references' definitions."""
    if cfg.noise_dist == "logit_normal":
        (mt, st), (mr, sr) = cfg.time_dist_params("t"), cfg.time_dist_params("r")
        t_raw, r_raw = 1 / (1 + np.exp(-(a * st + mt))), 1 / (1 + np.exp(-(b * sr + mr)))
    else:
        t_raw, r_raw = a, b
    if cfg.rt_mask == "first":  # JAX: max / min, then the first floor(B p) get r = t
        t, r = np.maximum(t_raw, r_raw), np.minimum(t_raw, r_raw)
        first = np.arange(len(t)) < np.floor(len(t) * cfg.data_proportion)
        want = t, np.where(first, t, r)
    elif cfg.tr_sampler == "v0":  # py-meanflow v0: max / min, then r = t on the masked samples
        t, r = np.maximum(t_raw, r_raw), np.minimum(t_raw, r_raw)
        want = t, np.where(coins < cfg.data_proportion, t, r)
    else:  # py-meanflow v1: r = t on the masked samples, then r = min(t, r); t keeps its draw
        want = t_raw, np.minimum(t_raw, np.where(coins < cfg.data_proportion, t_raw, r_raw))
    # the report's NumPy oracle (parity.core.sampler_oracle) is these formulas too
    t_o, r_o = oracle.order_tr(*(oracle.raw_times(a, b, cfg) if cfg.noise_dist == "logit_normal" else (a, b)),
                               coins, cfg)
    np.testing.assert_allclose(t_o, want[0], rtol=1e-15, atol=0)
    np.testing.assert_allclose(r_o, want[1], rtol=1e-15, atol=0)
    return want


def _assert_formula(t, r, t_ref, r_ref):
    np.testing.assert_array_equal(t == r, t_ref == r_ref)  # the same samples tied, exactly
    np.testing.assert_allclose(t, t_ref, rtol=1e-14, atol=0)
    np.testing.assert_allclose(r, r_ref, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_sampler_is_the_formula(name):
    cfg = CONFIGS[name]
    t, r = tobj.sample_tr(N, cfg, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    _assert_formula(t.numpy(), r.numpy(), *_expected(cfg, *_torch_raw(cfg, 7)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_jax_sampler_is_the_formula(name):
    cfg = CONFIGS[name]
    t, r = jobj.sample_tr(jax.random.PRNGKey(7), N, cfg, jnp.float64)
    _assert_formula(np.asarray(t), np.asarray(r), *_expected(cfg, *_jax_raw(cfg, 7)))


def test_v1_keeps_t_and_differs_from_max_order():
    """v1's t is the raw t draw (marginal logit-normal(P_mean_t, P_std_t)), not max(t, r);
    with one shared distribution the two orders disagree on about an eighth of the samples."""
    cfg = CONFIGS["v1 default"]
    a, b, coins = _torch_raw(cfg, 3)
    t_raw, r_raw = oracle.raw_times(a, b, cfg)
    t, r = tobj.sample_tr(N, cfg, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    np.testing.assert_allclose(t.numpy(), t_raw, rtol=1e-15, atol=0)  # sigmoid rounding only
    wrong_t = np.where(coins < cfg.data_proportion, t_raw, np.maximum(t_raw, r_raw))  # the old t = max(t, r)
    assert 0.08 < np.mean(wrong_t != t.numpy()) < 0.17
    logit = np.log(t.numpy()) - np.log1p(-t.numpy())
    assert abs(logit.mean() - cfg.P_mean) < 0.03 and abs(logit.std() - cfg.P_std) < 0.03


def test_time_params_default_to_shared_and_round_trip():
    base = MeanFlowConfig()
    assert base.time_dist_params("t") == base.time_dist_params("r") == (-0.4, 1.0)
    own = override(base, ["P_mean_t=-0.6", "P_std_t=1.6", "P_mean_r=-4", "P_std_r=1.6"])
    assert own.time_dist_params("t") == (-0.6, 1.6) and own.time_dist_params("r") == (-4.0, 1.6)
    assert override(own, ["P_mean_t=none"]).time_dist_params("t") == (-0.4, 1.6)
    back = from_dict(MeanFlowConfig, json.loads(json.dumps(to_dict(own))))
    assert back == own
    assert from_dict(MeanFlowConfig, json.loads(json.dumps(to_dict(base)))).P_mean_t is None
    # P_mean moves both distributions while the per-time fields are unset
    assert dataclasses.replace(base, P_mean=0.3).time_dist_params("r") == (0.3, 1.0)


@pytest.mark.parametrize("field, value, match", [
    ("P_std_t", 0.0, r"P_std_t=0.0 must be > 0"), ("P_std_r", -1.0, r"P_std_r=-1.0 must be > 0"),
    ("P_mean_r", float("nan"), "P_mean_r=nan must be a finite number"),
    ("P_mean_t", "a", "P_mean_t='a' .* not of the expected type float"),
    ("P_std", 0.0, r"P_std=0.0 must be > 0"),
])
def test_time_params_validated(field, value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MeanFlowConfig(**{field: value})


def test_override_reads_optional_floats():
    with pytest.raises(ValueError, match="P_std_t='abc': expected float"):
        override(MeanFlowConfig(), ["P_std_t=abc"])


def test_report_sampler_checks_pass():
    results = sampler_check.sampler_checks(n=N)
    assert results and all(r.passed for r in results), [r for r in results if not r.passed]


def _broken_torch_v1(cfg, n, seed):
    """The old v1 (t = max(t, r), r as masked) in the torch port only."""
    out = sampler_check.draw_torch(cfg, n, seed)
    if cfg.rt_mask == "random" and cfg.tr_sampler == "v1":
        g = torch.Generator().manual_seed(seed)
        a, b = (tobj._sample_time(n, cfg, w, g, None, torch.float64) for w in ("t", "r"))
        keep = torch.rand(n, generator=g, dtype=torch.float64) < cfg.data_proportion
        r = torch.where(keep, a, b)
        out["t"], out["r"] = torch.maximum(a, r).numpy(), r.numpy()
    return out


def _no_prefix_drop(cfg, n, seed):
    """Class dropout as an independent Bernoulli mask (not the first num_drop) in the JAX port."""
    out = sampler_check.draw_jax(cfg, n, seed)
    out["drop_mask"] = np.random.default_rng(seed).uniform(size=n) < cfg.class_dropout_prob
    return out


def _shared_r_params(cfg, n, seed):
    """r drawn with t's distribution (P_mean_r / P_std_r ignored) in the torch port."""
    return sampler_check.draw_torch(dataclasses.replace(cfg, P_mean_r=None, P_std_r=None), n, seed)


@pytest.mark.parametrize("inject, expect", [
    (dict(draw_torch=_broken_torch_v1), {("random v1 one dist", "torch t,r KS"),
                                         ("random v1 one dist", "t,r KS cross")}),
    (dict(draw_jax=_no_prefix_drop), {("dit default", "jax drop mask"), ("first, own t/r dists", "jax drop mask"),
                                      ("py-meanflow v0", "jax drop mask"),
                                      ("py-meanflow v1", "jax drop mask"), ("random v1 one dist", "jax drop mask")}),
    (dict(draw_torch=_shared_r_params), {(c, q) for c in ("first, own t/r dists", "py-meanflow v0", "py-meanflow v1")
                                         for q in ("torch t,r KS", "t,r KS cross")}
     | {("py-meanflow v1", "torch r = t")}),  # v0's tie fraction is p whatever the distributions
], ids=["old v1", "drop not a prefix", "r ignores P_*_r"])
def test_report_sampler_checks_catch_a_broken_port(inject, expect):
    failed = {(r.variant, r.quantity) for r in sampler_check.sampler_checks(n=N, **inject) if not r.passed}
    assert failed == expect


@pytest.mark.parametrize("prob", [0.1, 0.3, 0.9])
def test_drop_mask_is_the_first_num_drop_of_the_same_coins(prob):
    """num_drop = number of Bernoulli(prob) coins; the FIRST num_drop samples drop (not the
    samples whose own coin came up, not the last ones), on the coins each backend drew."""
    n, cfg = 200, MeanFlowConfig(class_dropout_prob=prob)
    g = torch.Generator().manual_seed(11)
    noise = tobj.sample_noise((n, 3), cfg, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    for _ in range(2):  # t and r normals, then e, then the coins (first mode: no r = t coins)
        torch.randn(n, generator=g, dtype=torch.float64)
    torch.randn((n, 3), generator=g, dtype=torch.float64)
    coins = torch.rand(n, generator=g, dtype=torch.float64).numpy()
    want = oracle.drop_prefix(coins, prob)
    np.testing.assert_array_equal(noise.drop_mask.numpy(), want)
    assert not np.array_equal(want, coins < prob)  # the per-coin mask is another mask

    jnoise = jobj.sample_noise(jax.random.PRNGKey(11), (n, 3), cfg, jnp.float64)
    k_d = jax.random.split(jax.random.PRNGKey(11), 3)[2]
    jcoins = np.asarray(jax.random.uniform(k_d, (n,)))
    np.testing.assert_array_equal(np.asarray(jnoise.drop_mask), oracle.drop_prefix(jcoins, prob))
