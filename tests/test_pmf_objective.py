"""The pMF objective: JAX and torch agree on every named output and gradient (float64, random
x-predicting network, perceptual hooks on, a bundle reaching every branch incl. t < 0.05 and
t >= perceptual_max_t); the x-to-velocity conversion sits inside the JVP; pMF's (t, r) order
and tr_uniform follow the oracle; each injected bug is caught; bad hooks are refused."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

import jax_meanflow.pmf_objective as jpmf  # noqa: E402
import torch_meanflow.pmf_objective as tpmf  # noqa: E402
from meanflow_common import imf_draws  # noqa: E402
from meanflow_common.objective_configs import PMF_PRESETS, IMFConfig, PMFConfig  # noqa: E402
from tests.imf_sides import assert_agree, disagreeing, run_jax, run_torch  # noqa: E402
from tests.imf_testnet import NUM_CLASSES, bundle_arrays, jax_net, make_params, nchw, nhwc, to_torch, torch_net  # noqa: E402
from torch_meanflow.objective import JvpOptions  # noqa: E402

CFG = PMF_PRESETS["tiny"]  # noise_scale 2, perceptual_max_t 0.8, both perceptual terms on
PARAMS = make_params(2)


def _hooks(np_like):
    def lpips(pred, x):
        return ((np_like.tanh(pred) - np_like.tanh(x)) ** 2).sum(axis=tuple(range(1, pred.ndim)))

    def convnext(pred, x):
        return ((pred - x) ** 2).mean(axis=tuple(range(1, pred.ndim)))

    return lpips, convnext


def _torch_hooks():
    def lpips(pred, x):
        return ((torch.tanh(pred) - torch.tanh(x)) ** 2).sum(dim=tuple(range(1, pred.dim())))

    def convnext(pred, x):
        return ((pred - x) ** 2).mean(dim=tuple(range(1, pred.dim())))

    return tpmf.PerceptualHooks(lpips=lpips, convnext=convnext)


JAX_HOOKS = jpmf.PerceptualHooks(*_hooks(jnp))


@pytest.fixture(scope="module")
def bundle():
    return bundle_arrays(3, noise_scale=CFG.noise_scale)


@pytest.fixture(scope="module")
def ref(bundle):
    x, e, y, f = bundle
    return run_jax(jpmf.pmf_loss, jpmf.PMFNoise, PARAMS, x, e, y, f, CFG, perceptual=JAX_HOOKS)


def _torch(bundle, **kw):
    x, e, y, f = bundle
    return run_torch(tpmf.pmf_loss, tpmf.PMFNoise, PARAMS, x, e, y, f, CFG, perceptual=_torch_hooks(), **kw)


def test_jax_and_torch_agree_on_every_output_and_gradient(bundle, ref):
    assert_agree(ref, _torch(bundle), tol=1e-10)
    assert all(np.any(g != 0) for g in ref[1].values())


def test_conversion_velocity_and_perceptual_formulas(bundle, ref):
    x, e, y, f = bundle
    out = ref[0]
    t = f["t"]
    tb = t[:, None, None, None]
    z = (1 - tb) * x + tb * e
    clip = np.clip(t, CFG.t_clip_min, 1.0)[:, None, None, None]
    assert t[5] < CFG.t_clip_min and t[3] >= CFG.perceptual_max_t
    v_t = (z - x) / clip
    np.testing.assert_allclose(out["v_g"][0], v_t[0], atol=1e-12)  # dropped: v_g = v_t
    net = jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()})
    y_inp = np.where(f["drop_mask"], NUM_CLASSES, y)
    x_u, x_v = net(jnp.asarray(z), jnp.asarray(t), jnp.asarray(t - f["r"]), *(jnp.asarray(f[k]) for k in
                   ("omega", "t_min", "t_max")), jnp.asarray(y_inp))
    np.testing.assert_allclose(out["u"], (z - np.asarray(x_u)) / clip, atol=1e-12)
    np.testing.assert_allclose(out["v"], (z - np.asarray(x_v)) / clip, atol=1e-12)
    np.testing.assert_allclose(out["pred_x"], z - tb * out["u"], atol=1e-12)
    mask = t < CFG.perceptual_max_t
    assert np.array_equal(out["perceptual_mask"], mask) and not mask.all()
    lp, cn = _hooks(np)
    for name, fn, lam in (("lpips", lp, CFG.lpips_lambda), ("convnext", cn, CFG.convnext_lambda)):
        d = np.where(mask, fn(out["pred_x"], x), 0.0)
        np.testing.assert_allclose(out[f"{name}_dist"], d, rtol=1e-12)
        np.testing.assert_allclose(out[f"loss_{name}"], lam * d / (d + CFG.norm_eps) ** CFG.norm_p, rtol=1e-12)
    np.testing.assert_allclose(out["loss_per_sample"], out["loss_u"] + out["loss_v"] + out["loss_aux"], rtol=1e-12)


def test_du_dt_differentiates_through_the_conversion(bundle, ref):
    x, e, y, f = bundle
    out = ref[0]
    vel = jpmf.velocity_net(jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()}), CFG)
    t, r = jnp.asarray(f["t"]), jnp.asarray(f["r"])
    z = (1 - t[:, None, None, None]) * x + t[:, None, None, None] * e
    y_inp = jnp.where(jnp.asarray(f["drop_mask"]), NUM_CLASSES, jnp.asarray(y))
    w, lo, hi = (jnp.asarray(f[k]) for k in ("omega", "t_min", "t_max"))
    eps = 1e-6
    u = lambda s: np.asarray(vel(z + s * out["v_c"], t + s, t + s - r, w, lo, hi, y_inp)[0])  # noqa: E731
    fd = (u(eps) - u(-eps)) / (2 * eps)
    np.testing.assert_allclose(out["du_dt"], fd, rtol=0, atol=1e-7 * np.max(np.abs(fd)))


def test_without_perceptual_terms_the_aux_loss_is_zero(bundle):
    x, e, y, f = bundle
    cfg = PMFConfig(noise_scale=2.0)
    a = run_jax(jpmf.pmf_loss, jpmf.PMFNoise, PARAMS, x, e, y, f, cfg)
    b = run_torch(tpmf.pmf_loss, tpmf.PMFNoise, PARAMS, x, e, y, f, cfg)
    assert_agree(a, b)
    assert np.all(a[0]["loss_aux"] == 0) and np.all(a[0]["lpips_dist"] == 0)


# ----------------------------------------------------------------------------------
# Negative controls
# ----------------------------------------------------------------------------------


def _no_clip(original):
    return lambda z, x_pred, t, cfg: (z - x_pred) / t[:, None, None, None]


def _no_mask(original):
    return lambda t, cfg: torch.ones_like(t, dtype=torch.bool)


BUGS = {
    "conversion_without_clip": (_no_clip, "x_to_velocity", {"u", "v", "v_g", "du_dt", "loss_u_raw", "grad:Wu"}),
    "perceptual_mask_not_applied": (_no_mask, "perceptual_mask", {"perceptual_mask", "lpips_dist", "loss_aux",
                                                                  "loss_per_sample", "grad:Wu"}),
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_negative_control_is_caught(bundle, ref, monkeypatch, name):
    make, attr, must = BUGS[name]
    monkeypatch.setattr(tpmf, attr, make(getattr(tpmf, attr)))
    missed = must - disagreeing(ref, _torch(bundle, jvp=JvpOptions(engine="torch.func")))
    assert not missed, f"{name}: not caught on {sorted(missed)}"


# ----------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------


def _fields(noise):
    names = ("e", "t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")
    return {k: np.asarray(getattr(noise, k).numpy() if torch.is_tensor(getattr(noise, k)) else getattr(noise, k))
            for k in names}


def _oracle(n_t, n_r, uniform, e, u_lo, u_hi, u_w, coins, cfg):
    lt = lambda n: imf_draws.logit_normal(n, cfg.P_mean, cfg.P_std)  # noqa: E731
    t, r, fm = imf_draws.pmf_tr(lt(n_t), lt(n_r), cfg.data_proportion, uniform, cfg.tr_uniform_prob)
    t_min, t_max = imf_draws.cfg_interval(u_lo, u_hi, fm, cfg)
    return dict(e=cfg.noise_scale * e, t=t, r=r, omega=imf_draws.cfg_scale(u_w, cfg.cfg_max, cfg.cfg_beta),
                t_min=t_min, t_max=t_max, fm_mask=fm, drop_mask=imf_draws.prefix_drop(coins, cfg.class_dropout_prob)[1])


DRAW_CFG = PMFConfig(tr_uniform=True, tr_uniform_prob=0.5, noise_scale=2.0, data_proportion=0.5, cfg_beta=2.0)


def test_jax_draws_follow_the_oracle_formulas():
    shape, b = (8, 2, 2, 1), 8
    key = jax.random.key(4)
    got = _fields(jpmf.sample_pmf_noise(key, shape, DRAW_CFG, jnp.float64))
    k_tr, k_e, k_int, k_w, k_d = jax.random.split(key, 5)
    k_t, k_r, k_c, k_tu, k_ru = jax.random.split(k_tr, 5)
    k_lo, k_hi = jax.random.split(k_int)
    n = lambda k, s=(b,): np.asarray(jax.random.normal(k, s, jnp.float64))  # noqa: E731
    u = lambda k: np.asarray(jax.random.uniform(k, (b,), jnp.float64))  # noqa: E731
    want = _oracle(n(k_t), n(k_r), (u(k_c), u(k_tu), u(k_ru)), n(k_e, shape), u(k_lo), u(k_hi), u(k_w),
                   np.asarray(jax.random.uniform(k_d, (b,))), DRAW_CFG)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=0, err_msg=k)


def test_torch_draws_follow_the_oracle_formulas():
    shape, b = (8, 1, 2, 2), 8
    got = _fields(tpmf.sample_pmf_noise(shape, DRAW_CFG, torch.Generator().manual_seed(4), dtype=torch.float64))
    g = torch.Generator().manual_seed(4)
    n = lambda s=(b,): torch.randn(s, generator=g, dtype=torch.float64).numpy()  # noqa: E731
    u = lambda: torch.rand(b, generator=g, dtype=torch.float64).numpy()  # noqa: E731
    n_t, n_r = n(), n()
    uniform = (u(), u(), u())
    e = n(shape)
    want = _oracle(n_t, n_r, uniform, e, u(), u(), u(), u(), DRAW_CFG)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=0, err_msg=k)


def test_pmf_order_differs_from_imf():
    """pMF sets r = t on the fm prefix BEFORE max/min: an fm sample keeps its own t draw."""
    t_d, r_d = np.array([0.2, 0.9, 0.3]), np.array([0.8, 0.1, 0.5])
    t_p, r_p, fm = imf_draws.pmf_tr(t_d, r_d, 0.34)
    t_i, r_i, _ = imf_draws.imf_tr(t_d, r_d, 0.34)
    assert fm.tolist() == [True, False, False]
    assert (t_p[0], r_p[0]) == (0.2, 0.2) and (t_i[0], r_i[0]) == (0.8, 0.8)
    np.testing.assert_array_equal(t_p[1:], t_i[1:])
    d = imf_draws.draw_pmf(np.random.default_rng(0), (4000, 1), PMFConfig(noise_scale=3.0))
    assert abs(np.std(d.e) - 3.0) < 0.15


# ----------------------------------------------------------------------------------
# Sampler and bad input
# ----------------------------------------------------------------------------------


def test_sampler_one_step_returns_the_x_prediction_and_backends_agree(bundle):
    x, e, y, _ = bundle
    e = e / CFG.noise_scale
    jn, tn = jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()}), torch_net(to_torch(PARAMS))
    one = np.asarray(jpmf.sample_pmf(jn, jnp.asarray(e), jnp.asarray(y), CFG, num_steps=1))
    ones = jnp.ones(6)
    w, lo, hi = (jnp.full((6,), v) for v in (CFG.sample_omega, CFG.sample_t_min, CFG.sample_t_max))
    x_u = np.asarray(jn(jnp.asarray(CFG.noise_scale * e), ones, ones, w, lo, hi, jnp.asarray(y))[0])
    np.testing.assert_allclose(one, x_u, atol=1e-12)  # z - 1 * (z - x_u) / 1
    for steps in (1, 2):
        a = np.asarray(jpmf.sample_pmf(jn, jnp.asarray(e), jnp.asarray(y), CFG, num_steps=steps))
        b = nhwc(tpmf.sample_pmf(tn, torch.tensor(nchw(e)), torch.tensor(y), CFG, num_steps=steps).numpy())
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_bad_hooks_are_refused(bundle):
    x, e, y, f = bundle
    lp, _ = _hooks(jnp)
    with pytest.raises(ValueError, match="PMFConfig.convnext=True but no convnext hook"):
        run_jax(jpmf.pmf_loss, jpmf.PMFNoise, PARAMS, x, e, y, f, CFG, perceptual=jpmf.PerceptualHooks(lpips=lp))
    with pytest.raises(ValueError, match="lpips hook was given but PMFConfig.lpips=False"):
        run_torch(tpmf.pmf_loss, tpmf.PMFNoise, PARAMS, x, e, y, f, PMFConfig(),
                  perceptual=tpmf.PerceptualHooks(lpips=_torch_hooks().lpips))
    bad = tpmf.PerceptualHooks(lpips=lambda p, q: p.sum(), convnext=_torch_hooks().convnext)
    with pytest.raises(ValueError, match=r"lpips hook must return per-sample distances \[B\]"):
        run_torch(tpmf.pmf_loss, tpmf.PMFNoise, PARAMS, x, e, y, f, CFG, perceptual=bad)
    with pytest.raises(TypeError, match="needs a PMFConfig"):
        run_jax(jpmf.pmf_loss, jpmf.PMFNoise, PARAMS, x, e, y, f, IMFConfig())
    with pytest.raises(ValueError, match="t_clip_min"):
        PMFConfig(t_clip_min=0.0)
    with pytest.raises(ValueError, match="noise_scale"):
        PMFConfig(noise_scale=-1.0)
