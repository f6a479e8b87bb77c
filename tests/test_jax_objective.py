"""The JAX MeanFlow objective against closed-form networks and hand computation (float64).

The network u(z, t, h, y) = tanh(flat(z) A + a) (1 + t^2) + b sin(3 h) + c[y] is nonlinear
in z, t and h and depends on the label, so its total derivative along (v_g, 1, 0) is
known analytically and the guidance terms for y and for the null class differ.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_meanflow.objective import (
    MeanFlowNoise,
    cond_drop,
    flow_matching_loss,
    guidance_velocity,
    meanflow_loss,
    sample_noise,
    sample_tr,
)
from meanflow_common.config import MeanFlowConfig

jax.config.update("jax_enable_x64", True)

B, SHAPE, K = 6, (2, 3, 2), 5  # batch, NHWC-like data shape, classes (+1 null row)
D = math.prod(SHAPE)
NULL = K


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "A": rng.normal(size=(D, D)) / np.sqrt(D),
        "a": rng.normal(size=(D,)),
        "b": rng.normal(size=SHAPE),
        "c": rng.normal(size=(K + 1,) + SHAPE),
    }


def _u_jax(p, z, t, h, y, train=True):
    s = jnp.tanh(z.reshape(z.shape[0], -1) @ p["A"] + p["a"]).reshape(z.shape)
    tb, hb = t[:, None, None, None], h[:, None, None, None]
    return s * (1 + tb**2) + p["b"] * jnp.sin(3 * hb) + p["c"][y]


def _u_np(p, z, t, h, y):
    s = np.tanh(z.reshape(len(z), -1) @ p["A"] + p["a"]).reshape(z.shape)
    tb, hb = t[:, None, None, None], h[:, None, None, None]
    return s * (1 + tb**2) + p["b"] * np.sin(3 * hb) + p["c"][y]


def _du_dt_np(p, z, t, h, w):
    """Analytic total derivative of u along (dz, dt, dh) = (w, 1, 1)."""
    s = np.tanh(z.reshape(len(z), -1) @ p["A"] + p["a"])
    dz = ((1 - s**2) * (w.reshape(len(w), -1) @ p["A"])).reshape(z.shape)
    tb, hb = t[:, None, None, None], h[:, None, None, None]
    return dz * (1 + tb**2) + s.reshape(z.shape) * 2 * tb + p["b"] * 3 * np.cos(3 * hb)


def _inputs(seed=1, drop=0, t=None, r=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B,) + SHAPE)
    e = rng.normal(size=(B,) + SHAPE)
    if t is None:
        a, b = rng.uniform(size=B), rng.uniform(size=B)
        t, r = np.maximum(a, b), np.minimum(a, b)
    y = rng.integers(0, K, size=B)
    mask = np.arange(B) < drop
    return x, y, MeanFlowNoise(e=jnp.asarray(e), t=jnp.asarray(t), r=jnp.asarray(r), drop_mask=jnp.asarray(mask))


def _u_fn(p):
    pj = jax.tree.map(jnp.asarray, p)
    return lambda z, t, h, y, train: _u_jax(pj, z, t, h, y, train)


def _np_reference(p, x, y, noise, cfg):
    """The whole MeanFlow objective, written out in numpy."""
    e, t, r, mask = (np.asarray(a) for a in (noise.e, noise.t, noise.r, noise.drop_mask))
    tb = t[:, None, None, None]
    z = (1 - tb) * x + tb * e
    v = e - x
    zeros = np.zeros(B)
    if cfg.guidance_eq:
        v_unc = _u_np(p, z, t, zeros, np.full(B, NULL))
        inside = ((t >= cfg.t_start) & (t <= cfg.t_end))[:, None, None, None]
        om = np.where(inside, cfg.omega, 1.0)
        if cfg.kappa == 0:
            v_g = v_unc + om * (v - v_unc)
        else:
            ka = np.where(inside, cfg.kappa, 0.0)
            v_g = om * v + (1 - om - ka) * v_unc + ka * _u_np(p, z, t, zeros, y)
    else:
        v_g = v
    y_inp = np.where(mask, NULL, y)
    v_g = np.where(mask[:, None, None, None], v, v_g)
    u = _u_np(p, z, t, t - r, y_inp)
    du = _du_dt_np(p, z, t, t - r, v_g if cfg.tangent == "guided" else v)
    u_tgt = v_g - np.clip(t - r, 0, 1)[:, None, None, None] * du
    L = ((u - u_tgt) ** 2).sum(axis=(1, 2, 3))
    w = (L + cfg.norm_eps) ** cfg.norm_p
    return dict(u=u, du_dt=du, v=v, v_g=v_g, u_tgt=u_tgt, loss_per_sample=L, weight=w,
                loss=np.mean(L / w), v_loss=((u - v) ** 2).sum(axis=(1, 2, 3)))


GUIDED = MeanFlowConfig(omega=1.7, kappa=0.3, t_start=0.25, t_end=0.8, norm_p=0.75, norm_eps=0.05)


@pytest.mark.parametrize(
    "cfg",
    [GUIDED, MeanFlowConfig(omega=2.0, kappa=0.0, t_start=0.3), MeanFlowConfig(guidance_eq="", tangent="v")],
    ids=["cfg_kappa_pos", "cfg_kappa_zero", "no_guidance"],
)
def test_every_output_matches_numpy(cfg):
    p = _params()
    x, y, noise = _inputs(drop=2)
    out = meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, cfg, null_y=jnp.full((B,), NULL))
    ref = _np_reference(p, x, y, noise, cfg)
    for name, want in ref.items():
        np.testing.assert_allclose(np.asarray(getattr(out, name)), want, rtol=1e-10, atol=1e-12, err_msg=name)
    assert out.loss.shape == () and out.loss_per_sample.shape == (B,) and out.v_loss.shape == (B,)


def test_du_dt_is_the_total_derivative_not_the_partial():
    p = _params()
    x, y, noise = _inputs(drop=0)
    cfg = GUIDED
    u_fn = _u_fn(p)
    out = meanflow_loss(u_fn, jnp.asarray(x), jnp.asarray(y), noise, cfg, null_y=jnp.full((B,), NULL))
    t, r, v_g = noise.t, noise.r, out.v_g
    tb = t[:, None, None, None]
    z = (1 - tb) * x + tb * noise.e
    # Central finite difference of s -> u(z + s v_g, t + s, (t + s) - r).
    eps = 1e-6

    def along(s):
        return _u_jax(jax.tree.map(jnp.asarray, p), z + s * v_g, t + s, t + s - r, y)

    fd = (along(eps) - along(-eps)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(out.du_dt), np.asarray(fd), rtol=1e-6, atol=1e-8)
    analytic = _du_dt_np(p, *(np.asarray(a) for a in (z, t, t - r, v_g)))
    np.testing.assert_allclose(np.asarray(out.du_dt), analytic, rtol=1e-10)
    # The seed guide's mistake (zero z-tangent, partial in t) gives something else.
    _, partial = jax.jvp(lambda zz, tt: _u_jax(jax.tree.map(jnp.asarray, p), zz, tt, tt - r, y),
                         (z, t), (jnp.zeros_like(z), jnp.ones_like(t)))
    assert float(jnp.max(jnp.abs(partial - out.du_dt))) > 0.1


def test_tangent_option_v_uses_plain_velocity():
    p = _params()
    x, y, noise = _inputs()
    cfg = MeanFlowConfig(omega=1.5, kappa=0.2, tangent="v")
    out = meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, cfg, null_y=jnp.full((B,), NULL))
    ref = _np_reference(p, x, y, noise, cfg)
    np.testing.assert_allclose(np.asarray(out.du_dt), ref["du_dt"], rtol=1e-10)
    guided = meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, MeanFlowConfig(omega=1.5, kappa=0.2),
                           null_y=jnp.full((B,), NULL))
    assert float(jnp.max(jnp.abs(guided.du_dt - out.du_dt))) > 1e-3


@pytest.mark.parametrize("kappa", [0.0, 0.4])
def test_guidance_velocity_by_hand_and_window(kappa):
    p = _params()
    rng = np.random.default_rng(3)
    z, v = rng.normal(size=(B,) + SHAPE), rng.normal(size=(B,) + SHAPE)
    t = np.array([0.05, 0.2, 0.3, 0.5, 0.7, 0.95])
    y = rng.integers(0, K, size=B)
    cfg = MeanFlowConfig(omega=2.5, kappa=kappa, t_start=0.25, t_end=0.75)
    v_g = np.asarray(guidance_velocity(_u_fn(p), jnp.asarray(v), jnp.asarray(z), jnp.asarray(t),
                                       jnp.asarray(y), cfg, jnp.full((B,), NULL)))
    v_unc = _u_np(p, z, t, np.zeros(B), np.full(B, NULL))
    v_cond = _u_np(p, z, t, np.zeros(B), y)
    assert np.abs(v_unc - v_cond).max() > 0.1  # the labels matter
    inside = (t >= 0.25) & (t <= 0.75)
    for i in range(B):
        if not inside[i]:  # omega' = 1, kappa' = 0: v_g = v
            np.testing.assert_allclose(v_g[i], v[i], rtol=1e-12, atol=1e-12)
        elif kappa == 0:
            np.testing.assert_allclose(v_g[i], v_unc[i] + 2.5 * (v[i] - v_unc[i]), rtol=1e-12)
        else:
            want = 2.5 * v[i] + (1 - 2.5 - kappa) * v_unc[i] + kappa * v_cond[i]
            np.testing.assert_allclose(v_g[i], want, rtol=1e-12)
    assert not np.allclose(v_g[inside], v[inside])


def test_guidance_off_returns_v_without_calling_the_network():
    def boom(*args):
        raise AssertionError("network called")

    v = jnp.ones((B,) + SHAPE)
    out = guidance_velocity(boom, v, v, jnp.full((B,), 0.5), None, MeanFlowConfig(guidance_eq=""), None)
    assert out is v


def test_cond_drop_first_samples():
    rng = np.random.default_rng(4)
    v, v_g = rng.normal(size=(B,) + SHAPE), rng.normal(size=(B,) + SHAPE)
    y = np.arange(B) % K
    mask = np.arange(B) < 3
    y_inp, vg2 = cond_drop(jnp.asarray(v), jnp.asarray(v_g), jnp.asarray(y), jnp.asarray(mask), NULL)
    np.testing.assert_array_equal(np.asarray(y_inp), np.where(mask, NULL, y))
    np.testing.assert_array_equal(np.asarray(vg2)[:3], v[:3])
    np.testing.assert_array_equal(np.asarray(vg2)[3:], v_g[3:])


def test_r_equal_t_targets_v_g_and_matches_flow_matching():
    p = _params()
    t = np.linspace(0.1, 0.9, B)
    x, y, noise = _inputs(t=t, r=t.copy(), drop=1)
    args = (jnp.asarray(x), jnp.asarray(y), noise, GUIDED)
    out = meanflow_loss(_u_fn(p), *args, null_y=jnp.full((B,), NULL))
    np.testing.assert_allclose(np.asarray(out.u_tgt), np.asarray(out.v_g), rtol=0, atol=0)
    fm = flow_matching_loss(_u_fn(p), *args, null_y=jnp.full((B,), NULL))
    np.testing.assert_allclose(float(fm.loss), float(out.loss), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(fm.u), np.asarray(out.u), rtol=1e-12)
    assert not np.any(np.asarray(fm.du_dt))


def test_gradient_flows_through_u_only():
    """grad(loss) equals the grad of sum (u - u_tgt)^2 / w with u_tgt and w held fixed."""
    p = jax.tree.map(jnp.asarray, _params())
    x, y, noise = _inputs(drop=1)
    null = jnp.full((B,), NULL)

    def loss(p):
        return meanflow_loss(lambda *a: _u_jax(p, *a), jnp.asarray(x), jnp.asarray(y), noise, GUIDED, null).loss

    out = meanflow_loss(lambda *a: _u_jax(p, *a), jnp.asarray(x), jnp.asarray(y), noise, GUIDED, null)
    tb = noise.t[:, None, None, None]
    z = (1 - tb) * x + tb * noise.e
    y_inp = jnp.where(noise.drop_mask, NULL, y)

    def surrogate(p):
        u = _u_jax(p, z, noise.t, noise.t - noise.r, y_inp)
        return jnp.mean(jnp.sum((u - out.u_tgt) ** 2, axis=(1, 2, 3)) / out.weight)

    g, g_ref = jax.grad(loss)(p), jax.grad(surrogate)(p)
    for k in p:
        np.testing.assert_allclose(np.asarray(g[k]), np.asarray(g_ref[k]), rtol=1e-9, atol=1e-12, err_msg=k)
    # Without the stop-gradients the gradient would differ (the check can fail).
    fd = (loss(dict(p, a=p["a"].at[0].add(1e-6))) - loss(dict(p, a=p["a"].at[0].add(-1e-6)))) / 2e-6
    assert abs(float(fd) - float(g["a"][0])) > 1e-4 * max(1.0, abs(float(fd)))


def test_float32_stays_float32_and_jit_matches_eager():
    p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _params())
    x, y, noise = _inputs(drop=2)
    noise32 = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, noise)
    u_fn = lambda *a: _u_jax(p, *a)  # noqa: E731
    null = jnp.full((B,), NULL)
    out = meanflow_loss(u_fn, jnp.asarray(x, jnp.float32), jnp.asarray(y), noise32, GUIDED, null)
    for name in ("u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "weight"):
        assert getattr(out, name).dtype == jnp.float32, name
    jitted = jax.jit(lambda x, n: meanflow_loss(u_fn, x, jnp.asarray(y), n, GUIDED, null))
    np.testing.assert_allclose(float(jitted(jnp.asarray(x, jnp.float32), noise32).loss), float(out.loss), rtol=1e-5)


def _bad(noise, **kw):
    return noise.replace(**kw)


@pytest.mark.parametrize(
    "mutate, err, match",
    [
        (lambda n: _bad(n, t=n.r, r=n.t), ValueError, r"t < r at indices"),
        (lambda n: _bad(n, e=n.e[:, :1]), ValueError, r"noise.e has shape"),
        (lambda n: _bad(n, t=n.t[:, None]), ValueError, r"noise.t must have shape \[B\]"),
        (lambda n: _bad(n, r=n.r[:-1]), ValueError, r"noise.r must have shape \[B\]"),
        (lambda n: _bad(n, t=n.t + 1.0), ValueError, r"\[0, 1\]"),
        (lambda n: _bad(n, e=n.e.astype(jnp.float32)), TypeError, r"dtype"),
        (lambda n: _bad(n, drop_mask=n.drop_mask.astype(jnp.int32)), TypeError, r"drop_mask must be bool"),
    ],
    ids=["t_lt_r", "e_shape", "t_rank", "r_len", "t_range", "e_dtype", "mask_dtype"],
)
def test_bad_noise_raises(mutate, err, match):
    p = _params()
    x, y, noise = _inputs()
    with pytest.raises(err, match=match):
        meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), mutate(noise), GUIDED, null_y=jnp.full((B,), NULL))


def test_missing_null_conditioning_raises():
    p = _params()
    x, y, noise = _inputs(drop=0)
    with pytest.raises(ValueError, match="needs null_y"):
        meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, GUIDED)
    x, y, noise = _inputs(drop=2)
    with pytest.raises(ValueError, match="null_y is None"):
        meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, MeanFlowConfig(guidance_eq=""))
    with pytest.raises(ValueError, match="NHWC|at least 2 axes"):
        meanflow_loss(_u_fn(p), jnp.zeros((B,)), jnp.asarray(y), noise, GUIDED, null_y=NULL)


# ----------------------------------------------------------------------------------
# Sampling (t, r) and the drop mask
# ----------------------------------------------------------------------------------

N = 20000
MU, SIG = -0.4, 1.0
E_MAX = MU + SIG / math.sqrt(math.pi)  # mean of the max of two iid N(MU, SIG^2)
E_MIN = MU - SIG / math.sqrt(math.pi)


def _logit(a):
    a = np.asarray(a)
    return np.log(a) - np.log1p(-a)


def test_sample_tr_first_mode_statistics():
    cfg = MeanFlowConfig()
    t, r = sample_tr(jax.random.PRNGKey(0), N, cfg, jnp.float64)
    t, r = np.asarray(t), np.asarray(r)
    assert t.shape == r.shape == (N,) and t.dtype == np.float64
    assert np.all(t >= r) and np.all((0 < r) & (t < 1))
    n_fm = math.floor(N * 0.75)
    assert np.all(t[:n_fm] == r[:n_fm]) and np.all(t[n_fm:] > r[n_fm:])
    assert abs(_logit(t).mean() - E_MAX) < 0.03
    assert abs(_logit(t).var() - SIG**2 * (1 - 1 / math.pi)) < 0.05
    assert abs(_logit(r[n_fm:]).mean() - E_MIN) < 0.05


def test_sample_tr_uniform():
    t, r = sample_tr(jax.random.PRNGKey(1), N, MeanFlowConfig(noise_dist="uniform", data_proportion=0.0))
    assert t.dtype == jnp.float32
    assert abs(float(t.mean()) - 2 / 3) < 0.01 and abs(float(r.mean()) - 1 / 3) < 0.01


@pytest.mark.parametrize("sampler", ["v0", "v1"])
def test_sample_tr_random_mode(sampler):
    p = 0.6
    cfg = MeanFlowConfig(rt_mask="random", tr_sampler=sampler, data_proportion=p)
    t, r = sample_tr(jax.random.PRNGKey(2), N, cfg, jnp.float64)
    t, r = np.asarray(t), np.asarray(r)
    assert np.all(t >= r)
    ties = np.mean(t == r)
    first = np.arange(N) < math.floor(N * p)
    assert 0.3 < np.mean(t[first] == r[first]) < 0.9  # a random subset, not the prefix
    if sampler == "v0":
        assert abs(ties - p) < 0.02
        assert abs(_logit(t).mean() - E_MAX) < 0.03
    else:  # t keeps its own draw; r = min(t, r) ties also where the unmasked r landed above t
        assert abs(ties - (p + (1 - p) / 2)) < 0.02
        assert abs(_logit(t).mean() - MU) < 0.03 and abs(_logit(t).std() - SIG) < 0.03


@pytest.mark.parametrize("prob, lo, hi", [(0.0, 0, 0), (0.3, 240, 360), (1.0, 1000, 1000)])
def test_sample_noise_drop_prefix(prob, lo, hi):
    cfg = MeanFlowConfig(class_dropout_prob=prob)
    noise = sample_noise(jax.random.PRNGKey(5), (1000, 2, 2, 1), cfg, jnp.float64)
    mask = np.asarray(noise.drop_mask)
    n = int(mask.sum())
    assert mask.dtype == bool and lo <= n <= hi
    assert np.all(mask[:n]) and not np.any(mask[n:])
    assert noise.e.shape == (1000, 2, 2, 1) and noise.e.dtype == jnp.float64
    assert noise.t.shape == noise.r.shape == (1000,)
    assert abs(float(noise.e.std()) - 1.0) < 0.05


def test_guidance_calls_use_train_false_and_h_zero():
    """The guidance network calls run in eval mode with h = 0; the JVP call gets `train`."""
    p = _params()
    x, y, noise = _inputs(drop=1)
    calls = []

    def u_fn(z, t, h, yy, train):
        h_zero = None if isinstance(h, jax.core.Tracer) else bool(np.all(np.asarray(h) == 0))
        calls.append((train, h_zero, bool(np.all(np.asarray(yy) == NULL))))
        return _u_jax(jax.tree.map(jnp.asarray, p), z, t, h, yy) + (0.5 if train else 0.0)

    meanflow_loss(u_fn, jnp.asarray(x), jnp.asarray(y), noise, GUIDED, jnp.full((B,), NULL), train=True)
    assert calls[:2] == [(False, True, True), (False, True, False)]  # v_uncond, v_cond
    assert [c[:2] for c in calls[2:]] == [(True, None)]  # the single JVP call (traced h)


def test_pytree_conditioning_without_null_and_array_labels_required_with_it():
    """Conditioning that is not a label array (e.g. FLOWER tokens) works with guidance off."""
    p = _params()
    x, y, noise = _inputs(drop=0)
    cond = {"label": jnp.asarray(y), "scale": jnp.full((B,), 0.5)}

    def u_fn(z, t, h, c, train):
        return _u_jax(jax.tree.map(jnp.asarray, p), z, t, h, c["label"]) * c["scale"][:, None, None, None]

    cfg = MeanFlowConfig(guidance_eq="")
    out = meanflow_loss(u_fn, jnp.asarray(x), cond, noise, cfg)
    ref = meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, cfg)
    np.testing.assert_allclose(np.asarray(out.u), 0.5 * np.asarray(ref.u), rtol=1e-12)
    with pytest.raises(TypeError, match="array labels"):
        meanflow_loss(u_fn, jnp.asarray(x), cond, noise, GUIDED, null_y=NULL)
    with pytest.raises(ValueError, match="does not broadcast"):
        meanflow_loss(_u_fn(p), jnp.asarray(x), jnp.asarray(y), noise, GUIDED, null_y=jnp.full((B + 1,), NULL))
