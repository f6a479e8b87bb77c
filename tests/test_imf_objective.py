"""The iMF objective: JAX and torch agree on every named output and every parameter gradient
(float64, a random network, a bundle reaching every branch); du/dt is the total derivative
(central finite difference); each backend's draws follow the NumPy oracle; each injected bug
is caught; bad input is refused by name."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

import jax_meanflow.imf_objective as jimf  # noqa: E402
import torch_meanflow.imf_objective as timf  # noqa: E402
from meanflow_common import imf_draws  # noqa: E402
from meanflow_common.objective_configs import IMF_PRESETS, IMFConfig  # noqa: E402
from tests.imf_sides import assert_agree, disagreeing, run_jax, run_torch  # noqa: E402
from tests.imf_testnet import NUM_CLASSES, bundle_arrays, jax_net, make_params, nchw, nhwc, to_torch, torch_net  # noqa: E402
from torch_meanflow.objective import JvpOptions  # noqa: E402

CFG = IMF_PRESETS["tiny"]
PARAMS = make_params(0)


@pytest.fixture(scope="module")
def bundle():
    return bundle_arrays(1)


@pytest.fixture(scope="module")
def ref(bundle):
    x, e, y, f = bundle
    return run_jax(jimf.imf_loss, jimf.IMFNoise, PARAMS, x, e, y, f, CFG)


def _torch(bundle, **kw):
    x, e, y, f = bundle
    return run_torch(timf.imf_loss, timf.IMFNoise, PARAMS, x, e, y, f, CFG, **kw)


# ----------------------------------------------------------------------------------
# Parity and semantics
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["rules", "torch.func"])
def test_jax_and_torch_agree_on_every_output_and_gradient(bundle, ref, engine):
    got = _torch(bundle, jvp=JvpOptions(engine=engine))
    assert_agree(ref, got, tol=1e-10)
    assert all(np.any(g != 0) for g in ref[1].values()), "every parameter must get a gradient"


def test_the_bundle_reaches_every_branch(bundle, ref):
    x, e, y, f = bundle
    out = ref[0]
    inside = (f["t"] >= f["t_min"]) & (f["t"] <= f["t_max"])
    assert np.array_equal(out["omega_eff"], np.where(inside, f["omega"], 1.0))
    assert not inside[1] and f["fm_mask"][1] and not inside[3] and not f["fm_mask"][3]
    v_t = e - x
    np.testing.assert_array_equal(out["v_g"][0], v_t[0])  # dropped: v_g = v_t
    # fm sample outside its interval: v_g_fm (raw omega), not the interval formula (omega' = 1 gives v_t)
    assert np.max(np.abs(out["v_g"][1] - v_t[1])) > 1e-3
    np.testing.assert_allclose(out["v_g"][3], v_t[3], rtol=0, atol=1e-12)  # reset: 1 - 1/1 = 0
    np.testing.assert_allclose(out["V"], out["u"] + (f["t"] - f["r"])[:, None, None, None] * out["du_dt"], atol=1e-12)
    for k in ("loss_u", "loss_v"):
        raw = out[f"{k}_raw"]
        np.testing.assert_allclose(out[k], raw / (raw + CFG.norm_eps) ** CFG.norm_p, rtol=1e-12)
    np.testing.assert_allclose(out["loss"], np.mean(out["loss_u"] + out["loss_v"]), rtol=1e-12)


def test_guidance_formulas_against_direct_network_calls(bundle, ref):
    """v_c / v_u / v_g from the formulas with separate network calls (not the batched 2B call)."""
    x, e, y, f = bundle
    net = jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()})
    t = jnp.asarray(f["t"])
    tb = t[:, None, None, None]
    z = (1 - tb) * x + tb * e
    zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
    w = jnp.asarray(f["omega"])
    v_c = np.asarray(net(z, t, zeros, w, zeros, ones, jnp.asarray(y))[1])
    v_u = np.asarray(net(z, t, zeros, ones, zeros, ones, jnp.full_like(jnp.asarray(y), NUM_CLASSES))[1])
    w_eff = ref[0]["omega_eff"]
    v_c_eff = np.asarray(net(z, t, zeros, jnp.asarray(w_eff), zeros, ones, jnp.asarray(y))[1])
    k = lambda a: (1 - 1 / a)[:, None, None, None]  # noqa: E731
    v_g = np.where(f["fm_mask"][:, None, None, None], (e - x) + k(f["omega"]) * (v_c - v_u),
                   (e - x) + k(w_eff) * (v_c_eff - v_u))
    v_g[f["drop_mask"]] = (e - x)[f["drop_mask"]]
    np.testing.assert_allclose(ref[0]["v_u"], v_u, atol=1e-12)
    np.testing.assert_allclose(ref[0]["v_c"], v_c_eff, atol=1e-12)
    np.testing.assert_allclose(ref[0]["v_g"], v_g, atol=1e-12)


def test_du_dt_is_the_total_derivative_along_v_c(bundle, ref):
    x, e, y, f = bundle
    out = ref[0]
    net = jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()})
    t, r = jnp.asarray(f["t"]), jnp.asarray(f["r"])
    tb = t[:, None, None, None]
    z = (1 - tb) * x + tb * e
    y_inp = jnp.where(jnp.asarray(f["drop_mask"]), NUM_CLASSES, jnp.asarray(y))
    w, lo, hi = (jnp.asarray(f[k]) for k in ("omega", "t_min", "t_max"))
    eps = 1e-6

    def central(tangent):
        def u(s):
            tt = t + s
            return np.asarray(net(z + s * tangent, tt, tt - r, w, lo, hi, y_inp)[0])
        return (u(eps) - u(-eps)) / (2 * eps)

    fd = central(out["v_c"])
    np.testing.assert_allclose(out["du_dt"], fd, rtol=0, atol=1e-7 * np.max(np.abs(fd)))
    # the tangent matters: along e - x the derivative is another one
    assert np.max(np.abs(central(e - x) - fd)) > 1e-2 * np.max(np.abs(fd))


# ----------------------------------------------------------------------------------
# Negative controls: each bug, injected into the torch side, is caught against JAX
# ----------------------------------------------------------------------------------


def _bug_tangent_e_minus_x(original):
    def f(net, z, t, r, noise, y_inp, tangent, options):  # e - x = (e - z) / (1 - t) for t < 1
        return original(net, z, t, r, noise, y_inp, (noise.e - z) / (1 - t)[:, None, None, None], options)
    return "u_v_and_du_dt", f


def _bug_du_dt_not_stopped(original):
    return "compound_v", lambda u, du_dt, t, r: u + (t - r)[:, None, None, None] * du_dt


def _bug_omega_not_reset(original):
    return "effective_omega", lambda omega, t, t_min, t_max: omega


def _bug_v_loss_dropped(original):
    def f(V, v, v_g, cfg):
        lu, lv, wu, wv = original(V, v, v_g, cfg)
        return lu, lv, wu, 0 * wv
    return "velocity_losses", f


# The adaptive weight l / (l + eps) is close to 1 for l >> eps, so the scalar loss hardly moves
# with the target; the raw per-sample losses and the gradients are the sensitive observables.
BUGS = {
    "tangent_e_minus_x": (_bug_tangent_e_minus_x, "u_v_and_du_dt", {"du_dt", "V", "loss_u_raw", "grad:Wu"}),
    "du_dt_not_stopped": (_bug_du_dt_not_stopped, "compound_v", {"grad:Wc"}),
    "omega_not_reset": (_bug_omega_not_reset, "effective_omega", {"v_c", "v_g", "omega_eff", "du_dt", "loss_u_raw",
                                                                    "loss_v_raw", "grad:Wu"}),
    "v_loss_dropped": (_bug_v_loss_dropped, "velocity_losses", {"loss", "loss_v", "grad:Wv"}),
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_negative_control_is_caught(bundle, ref, monkeypatch, name):
    make, attr, must = BUGS[name]
    monkeypatch.setattr(timf, attr, make(getattr(timf, attr))[1])
    # du/dt carries a graph only under torch.func.jvp (the rules engine computes it without one)
    got = _torch(bundle, jvp=JvpOptions(engine="torch.func"))
    missed = must - disagreeing(ref, got)
    assert not missed, f"{name}: not caught on {sorted(missed)}"


# ----------------------------------------------------------------------------------
# Drawing: NumPy oracle, backend formulas, distributions
# ----------------------------------------------------------------------------------


def _oracle_from_standard(n_t, n_r, e, u_lo, u_hi, u_w, coins, cfg):
    lt = lambda n: imf_draws.logit_normal(n, cfg.P_mean, cfg.P_std)  # noqa: E731
    t, r, fm = imf_draws.imf_tr(lt(n_t), lt(n_r), cfg.data_proportion)
    t_min, t_max = imf_draws.cfg_interval(u_lo, u_hi, fm, cfg)
    num_drop, drop = imf_draws.prefix_drop(coins, cfg.class_dropout_prob)
    return dict(e=e, t=t, r=r, omega=imf_draws.cfg_scale(u_w, cfg.cfg_max, cfg.cfg_beta), t_min=t_min, t_max=t_max,
                fm_mask=fm, drop_mask=drop)


def _fields(noise):
    names = ("e", "t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")
    return {k: np.asarray(getattr(noise, k).detach().numpy() if torch.is_tensor(getattr(noise, k))
                          else getattr(noise, k)) for k in names}


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_jax_draws_follow_the_oracle_formulas(beta):
    cfg = IMFConfig(cfg_beta=beta, data_proportion=0.5, class_dropout_prob=0.5)
    shape, b = (8, 2, 2, 1), 8
    key = jax.random.key(3)
    got = _fields(jimf.sample_imf_noise(key, shape, cfg, jnp.float64))
    k_tr, k_e, k_int, k_w, k_d = jax.random.split(key, 5)
    k_t, k_r = jax.random.split(k_tr)
    k_lo, k_hi = jax.random.split(k_int)
    normal = lambda k, s: np.asarray(jax.random.normal(k, s, jnp.float64))  # noqa: E731
    unif = lambda k: np.asarray(jax.random.uniform(k, (b,), jnp.float64))  # noqa: E731
    want = _oracle_from_standard(normal(k_t, (b,)), normal(k_r, (b,)), normal(k_e, shape), unif(k_lo), unif(k_hi),
                                 unif(k_w), np.asarray(jax.random.uniform(k_d, (b,))), cfg)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=0, err_msg=k)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_torch_draws_follow_the_oracle_formulas(beta):
    cfg = IMFConfig(cfg_beta=beta, data_proportion=0.5, class_dropout_prob=0.5)
    shape, b = (8, 1, 2, 2), 8
    got = _fields(timf.sample_imf_noise(shape, cfg, torch.Generator().manual_seed(3), dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    n = lambda s: torch.randn(s, generator=g, dtype=torch.float64).numpy()  # noqa: E731
    u = lambda: torch.rand(b, generator=g, dtype=torch.float64).numpy()  # noqa: E731
    n_t, n_r, e = n(b), n(b), n(shape)
    want = _oracle_from_standard(n_t, n_r, e, u(), u(), u(), u(), cfg)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-13, atol=0, err_msg=k)


def test_numpy_draws_and_both_backends_share_one_distribution():
    cfg, b = IMFConfig(), 6000
    ref = imf_draws.draw_imf(np.random.default_rng(0), (b, 1), cfg)
    j = _fields(jimf.sample_imf_noise(jax.random.key(0), (b, 1), cfg, jnp.float64))
    t = _fields(timf.sample_imf_noise((b, 1), cfg, torch.Generator().manual_seed(0), dtype=torch.float64))
    for side in (j, t):
        np.testing.assert_array_equal(side["fm_mask"], ref.fm_mask)
        keep = ~ref.fm_mask
        for k in ("t", "r", "omega", "t_min", "t_max"):
            qs = np.linspace(0.05, 0.95, 7)
            a, c = np.quantile(getattr(ref, k)[keep], qs), np.quantile(side[k][keep], qs)
            assert np.max(np.abs(a - c)) < 0.06 * max(1.0, np.max(a)), k
        assert abs(side["drop_mask"].sum() - b * cfg.class_dropout_prob) < 5 * np.sqrt(b * 0.1 * 0.9)
        assert np.all(side["drop_mask"][: int(side["drop_mask"].sum())])  # a prefix


def test_numpy_draws_structure():
    cfg = IMF_PRESETS["tiny"]
    d = imf_draws.draw_imf(np.random.default_rng(5), (6, 4, 4, 2), cfg)
    assert d.e.shape == (6, 4, 4, 2) and d.t.shape == (6,)
    n = imf_draws.num_fm(6, cfg.data_proportion)
    assert n == 2 and np.array_equal(d.fm_mask, np.arange(6) < 2)
    assert np.array_equal(d.r[:n], d.t[:n]) and np.all(d.r <= d.t)
    assert np.all(d.t_min[:n] == 0) and np.all(d.t_max[:n] == 1)
    assert np.all((d.omega >= 1) & (d.omega <= 1 + cfg.cfg_max))
    assert np.array_equal(d.drop_mask, np.arange(6) < d.num_drop)
    # the formulas at their edges
    np.testing.assert_allclose(imf_draws.cfg_scale(np.array([0.0, 1.0]), 7.0, 1.0), [1.0, 8.0])
    np.testing.assert_allclose(imf_draws.cfg_scale(np.array([0.0, 1.0]), 7.0, 2.0), [1.0, 8.0])


# ----------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_samplers_agree_and_follow_the_step_formula(bundle, steps):
    x, e, y, _ = bundle
    jn = jax_net({k: jnp.asarray(v) for k, v in PARAMS.items()})
    tn = torch_net(to_torch(PARAMS))
    kw = dict(num_steps=steps, omega=np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), t_min=0.2, t_max=0.7)
    a = np.asarray(jimf.sample_imf(jn, jnp.asarray(e), jnp.asarray(y), CFG, **kw))
    b = nhwc(timf.sample_imf(tn, torch.tensor(nchw(e)), torch.tensor(y), CFG, **kw).numpy())
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    z, grid = jnp.asarray(e), np.linspace(1, 0, steps + 1)
    full = lambda v: jnp.full((6,), v)  # noqa: E731
    for i in range(steps):
        u = jn(z, full(grid[i]), full(grid[i] - grid[i + 1]), jnp.asarray(kw["omega"]), full(0.2), full(0.7),
               jnp.asarray(y))[0]
        z = z - (grid[i] - grid[i + 1]) * u
    np.testing.assert_allclose(a, np.asarray(z), rtol=0, atol=1e-12)


def test_sampler_defaults_come_from_the_config(bundle):
    seen = []

    def net(z, t, h, omega, t_min, t_max, y):
        seen.append((float(t[0]), float(h[0]), float(omega[0]), float(t_min[0]), float(t_max[0])))
        return jnp.zeros_like(z), jnp.zeros_like(z)

    cfg = IMF_PRESETS["iMF-XL/2-2NFE"]
    jimf.sample_imf(net, jnp.asarray(bundle[1]), jnp.asarray(bundle[2]), cfg)
    assert seen == [(1.0, 0.5, 4.0, 0.36, 0.64), (0.5, 0.5, 4.0, 0.36, 0.64)]


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


def _bad(f, **changes):
    g = {k: v.copy() for k, v in f.items()}
    g.update(changes)
    return g


BAD = {
    "t < r": (dict(r=np.array([0.7, 0.3, 0.65, 0.5, 0.1, 0.01])), "t < r"),
    "omega < 1": (dict(omega=np.array([3.0, 4.0, 0.5, 5.0, 1.0, 2.5])), "omega must be finite and >= 1"),
    "interval": (dict(t_min=np.array([0.0, 0.5, 0.9, 0.2, 0.1, 0.0])), "t_min <= t_max"),
    "fm r != t": (dict(fm_mask=np.array([True, True, True, False, False, False])), "need r == t"),
    "shape": (dict(omega=np.ones(5)), r"noise.omega must have shape \[B\]"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_noise_is_refused_by_both_backends(bundle, name):
    x, e, y, f = bundle
    changes, match = BAD[name]
    g = _bad(f, **changes)
    with pytest.raises(ValueError, match=match):
        run_jax(jimf.imf_loss, jimf.IMFNoise, PARAMS, x, e, y, g, CFG)
    with pytest.raises(ValueError, match=match):
        run_torch(timf.imf_loss, timf.IMFNoise, PARAMS, x, e, y, g, CFG)


def test_bad_arguments_are_refused(bundle):
    x, e, y, f = bundle
    net = torch_net(to_torch(PARAMS))
    noise = timf.IMFNoise(e=torch.tensor(nchw(e)), **{k: torch.tensor(v) for k, v in f.items()})
    xt = torch.tensor(nchw(x))
    with pytest.raises(ValueError, match="needs null_y"):
        timf.imf_loss(net, xt, torch.tensor(y), noise, CFG, None)
    with pytest.raises(TypeError, match="integer labels"):
        timf.imf_loss(net, xt, torch.tensor(y, dtype=torch.float64), noise, CFG, NUM_CLASSES)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \[B\]"):
        timf.imf_loss(net, xt, torch.tensor(y[:3]), noise, CFG, NUM_CLASSES)
    with pytest.raises(TypeError, match="needs an IMFConfig"):
        timf.imf_loss(net, xt, torch.tensor(y), noise, object(), NUM_CLASSES)
    with pytest.raises(TypeError, match="noise.e has dtype"):
        timf.imf_loss(net, xt, torch.tensor(y), noise.to(dtype=torch.float32), CFG, NUM_CLASSES)
    with pytest.raises(ValueError, match="omega must be finite"):
        timf.sample_imf(net, torch.tensor(nchw(e)), torch.tensor(y), CFG, omega=0.5)
    with pytest.raises(ValueError, match="num_steps"):
        jimf.sample_imf(jax_net(PARAMS), jnp.asarray(e), jnp.asarray(y), CFG, num_steps=0)
    with pytest.raises(ValueError, match=r"noise.e has shape"):
        run_jax(jimf.imf_loss, jimf.IMFNoise, PARAMS, x, e[:, :2], y, f, CFG)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        imf_draws.draw_imf(0, (2, 1), CFG)


@pytest.mark.parametrize("change, match", [
    (dict(P_std=0.0), "P_std"), (dict(data_proportion=1.5), "data_proportion"), (dict(cfg_max=-1.0), "cfg_max"),
    (dict(t_min_low=0.6), "t_min_low"), (dict(sample_t_min=0.8), "sample_t_min"), (dict(num_steps=0), "num_steps"),
    (dict(norm_eps=0.0), "norm_eps"), (dict(sample_omega=0.9), "sample_omega"), (dict(norm_p="1"), "norm_p"),
])
def test_config_validation(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        IMFConfig(**change)
