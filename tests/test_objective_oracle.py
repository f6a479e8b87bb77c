"""An independent oracle of the MeanFlow objective in plain NumPy float64, against both backends.

The network is a small MLP whose total derivative along (v_g, 1, 0) has a closed form:
    pre = W1 flat(z) + a t + b h + C[y];  u = unflat(W2 tanh(pre)) + s sin(t) h
    du/dt = unflat(W2 ((1 - tanh(pre)^2) (W1 flat(v_g) + a + b))) + s (cos(t) h + sin(t))
(dh/dt = 1 along the tangent since r is held). The oracle forms z_t, v, the guidance
(window, kappa = 0 and kappa > 0), class dropout of the first samples, u_tgt with or
without the clip, the adaptive weight, the loss, v_loss, and the loss's gradient w.r.t. W2
(and the flow-matching baseline), all
from the objective's definition alone; each backend's objective must agree to 1e-12.
"""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_meanflow.objective as jobj
import torch_meanflow.objective as tobj
from meanflow_common.config import MeanFlowConfig
from parity.core.controls import OBJECTIVE_CONTROLS

CONTROLS = {c.name: c for c in OBJECTIVE_CONTROLS}

jax.config.update("jax_enable_x64", True)

B, SHAPE, HID, K = 8, (2, 3), 5, 4  # batch, data shape, hidden width, classes (+1 null)
D = SHAPE[0] * SHAPE[1]
NULL = K
TERMS = ("u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "weight", "v_loss")


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(HID, D)) / np.sqrt(D), "a": rng.normal(size=HID), "b": rng.normal(size=HID),
            "C": rng.normal(size=(K + 1, HID)), "W2": rng.normal(size=(D, HID)) / np.sqrt(HID),
            "s": rng.normal(size=SHAPE)}


# ----------------------------------------------------------------------------------
# The oracle
# ----------------------------------------------------------------------------------


def _np_pre(p, z, t, h, y):
    return z.reshape(len(z), D) @ p["W1"].T + np.outer(t, p["a"]) + np.outer(h, p["b"]) + p["C"][y]


def np_u(p, z, t, h, y):
    tb = t.reshape(-1, 1, 1)
    return (np.tanh(_np_pre(p, z, t, h, y)) @ p["W2"].T).reshape(z.shape) + p["s"] * np.sin(tb) * h.reshape(-1, 1, 1)


def np_du_dt(p, z, t, h, y, tangent):
    """Closed-form total derivative along (tangent, dt = 1, dr = 0), so dh = 1."""
    sech2 = 1 - np.tanh(_np_pre(p, z, t, h, y)) ** 2
    dpre = tangent.reshape(len(z), D) @ p["W1"].T + p["a"] + p["b"]
    tb, hb = t.reshape(-1, 1, 1), h.reshape(-1, 1, 1)
    return ((sech2 * dpre) @ p["W2"].T).reshape(z.shape) + p["s"] * (np.cos(tb) * hb + np.sin(tb))


def oracle(p, x, y, e, t, r, drop, cfg: MeanFlowConfig) -> dict:
    tb = t.reshape(-1, 1, 1)
    z = (1 - tb) * x + tb * e
    v = e - x
    null = np.full_like(y, NULL)
    zeros = np.zeros_like(t)
    if cfg.guidance_eq:
        inside = ((t >= cfg.t_start) & (t <= cfg.t_end)).reshape(-1, 1, 1)
        om = np.where(inside, cfg.omega, 1.0)
        v_unc = np_u(p, z, t, zeros, null)
        if cfg.kappa == 0:
            v_g = v_unc + om * (v - v_unc)
        else:
            ka = np.where(inside, cfg.kappa, 0.0)
            v_g = om * v + (1 - om - ka) * v_unc + ka * np_u(p, z, t, zeros, y)
    else:
        v_g = v
    v_g = np.where(drop.reshape(-1, 1, 1), v, v_g)
    y_in = np.where(drop, NULL, y)
    h = t - r
    u = np_u(p, z, t, h, y_in)
    du = np_du_dt(p, z, t, h, y_in, v_g if cfg.tangent == "guided" else v)
    hh = np.clip(h, 0, 1) if cfg.clip_h else h
    u_tgt = v_g - hh.reshape(-1, 1, 1) * du
    lps = np.sum((u - u_tgt) ** 2, axis=(1, 2))
    w = (lps + cfg.norm_eps) ** cfg.norm_p
    # d loss / d W2: only u depends on the weights (u_tgt and w carry no gradient)
    coef = (2 * (u - u_tgt) / w.reshape(-1, 1, 1) / len(x)).reshape(len(x), D)
    grad_w2 = coef.T @ np.tanh(_np_pre(p, z, t, h, y_in))
    return {"u": u, "du_dt": du, "v_g": v_g, "u_tgt": u_tgt, "loss_per_sample": lps,
            "loss": np.mean(lps / w), "weight": w, "v_loss": np.sum((u - v) ** 2, axis=(1, 2)),
            "grad_W2": grad_w2}


def oracle_flow_matching(p, x, y, e, t, r, drop, cfg: MeanFlowConfig) -> dict:
    """The flow-matching baseline: u(z_t, t, h = 0) regressed on v_g; r is ignored."""
    ref = oracle(p, x, y, e, t, t, drop, cfg)  # r = t: h = 0 and u_tgt = v_g exactly
    return {k: ref[k] for k in ("u", "v_g", "loss_per_sample", "loss", "weight", "v_loss", "grad_W2")}


# ----------------------------------------------------------------------------------
# The same network in each framework
# ----------------------------------------------------------------------------------


def jax_u_fn(p):
    def u_fn(z, t, h, y, train):
        pre = z.reshape(z.shape[0], D) @ p["W1"].T + t[:, None] * p["a"] + h[:, None] * p["b"] + p["C"][y]
        out = (jnp.tanh(pre) @ p["W2"].T).reshape(z.shape)
        return out + p["s"] * (jnp.sin(t) * h)[:, None, None]

    return u_fn


def torch_u_fn(p):
    def u_fn(z, t, h, y, train):
        pre = z.reshape(z.shape[0], D) @ p["W1"].T + t[:, None] * p["a"] + h[:, None] * p["b"] + p["C"][y]
        out = (torch.tanh(pre) @ p["W2"].T).reshape(z.shape)
        return out + p["s"] * (torch.sin(t) * h)[:, None, None]

    return u_fn


def _inputs(seed=1):
    rng = np.random.default_rng(seed)
    x, e = rng.normal(size=(B,) + SHAPE), rng.normal(size=(B,) + SHAPE)
    y = rng.integers(0, K, size=B)
    # t spans both sides of the window [0.3, 0.8]; samples 0, 3, 6 have r = t; 0, 1 dropped
    t = np.array([0.9, 0.2, 0.5, 0.7, 0.95, 0.35, 0.1, 0.6])
    r = t * np.array([1.0, 0.3, 0.5, 1.0, 0.1, 0.8, 1.0, 0.0])
    drop = np.arange(B) < 2
    return x, y, e, t, r, drop


BASE = MeanFlowConfig(t_start=0.3, t_end=0.8, omega=1.5, kappa=0.5, norm_p=0.75, norm_eps=0.01)
CONFIGS = {
    "cfg kappa>0 window": BASE,
    "cfg kappa=0 omega 2": dataclasses.replace(BASE, kappa=0.0, omega=2.0),
    "no guidance": dataclasses.replace(BASE, guidance_eq=""),
    "tangent v, no clip": dataclasses.replace(BASE, tangent="v", clip_h=False),
    "norm_p 0": dataclasses.replace(BASE, norm_p=0.0),
}


def run_jax(p, inputs, cfg, loss_fn=jobj.meanflow_loss):
    x, y, e, t, r, drop = inputs
    noise = jobj.MeanFlowNoise(e=jnp.asarray(e), t=jnp.asarray(t), r=jnp.asarray(r), drop_mask=jnp.asarray(drop))
    jp = {k: jnp.asarray(a) for k, a in p.items()}

    def loss(w2):
        out = loss_fn(jax_u_fn({**jp, "W2": w2}), jnp.asarray(x), jnp.asarray(y), noise, cfg,
                      null_y=jnp.full((B,), NULL))
        return out.loss, out

    (_, out), g = jax.value_and_grad(loss, has_aux=True)(jp["W2"])
    return {**{k: np.asarray(getattr(out, k)) for k in TERMS}, "grad_W2": np.asarray(g)}


def run_torch(p, inputs, cfg, engine="rules", loss_fn=None):
    x, y, e, t, r, drop = inputs
    tp = {k: torch.tensor(a) for k, a in p.items()}
    tp["W2"].requires_grad_(True)
    T = torch.tensor  # noqa: N806
    noise = tobj.MeanFlowNoise(e=T(e), t=T(t), r=T(r), drop_mask=T(drop))
    loss_fn = loss_fn or tobj.meanflow_loss  # looked up at call time: the controls patch the module
    with tobj.jvp_engine(engine):
        out = loss_fn(torch_u_fn(tp), T(x), T(y), noise, cfg, null_y=torch.full((B,), NULL))
    out.loss.backward()
    return {**{k: getattr(out, k).detach().numpy() for k in TERMS}, "grad_W2": tp["W2"].grad.numpy()}


def _assert_match(got, ref):
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_jax_objective_matches_numpy_oracle(name):
    p, inputs = _params(), _inputs()
    _assert_match(run_jax(p, inputs, CONFIGS[name]), oracle(p, *inputs, CONFIGS[name]))


@pytest.mark.parametrize("engine", tobj.JVP_ENGINES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_torch_objective_matches_numpy_oracle(name, engine):
    p, inputs = _params(), _inputs()
    _assert_match(run_torch(p, inputs, CONFIGS[name], engine), oracle(p, *inputs, CONFIGS[name]))


@pytest.mark.parametrize("name", ["cfg kappa>0 window", "no guidance"])
def test_flow_matching_baseline_matches_numpy_oracle(name):
    p, inputs = _params(), _inputs()
    ref = oracle_flow_matching(p, *inputs, CONFIGS[name])
    for got in (run_jax(p, inputs, CONFIGS[name], jobj.flow_matching_loss),
                run_torch(p, inputs, CONFIGS[name], loss_fn=tobj.flow_matching_loss)):
        _assert_match({k: got[k] for k in ref}, ref)
        assert not np.any(got["du_dt"])


def test_torch_memory_saving_path_matches_numpy_oracle():
    p, inputs = _params(), _inputs()
    cfg = dataclasses.replace(BASE, jvp_path="memory_saving")
    _assert_match(run_torch(p, inputs, cfg), oracle(p, *inputs, cfg))


def test_oracle_inputs_reach_every_branch():
    _, _, _, t, r, drop = _inputs()
    inside = (t >= BASE.t_start) & (t <= BASE.t_end)
    assert (inside & ~drop).any() and (~inside & ~drop).any()
    assert (t == r).any() and (r < t).any() and drop.any() and (~drop).any()


def test_closed_form_derivative_is_the_derivative():
    """The oracle's du/dt is the derivative of its own u (central difference, float64)."""
    p, (x, y, e, t, r, _) = _params(), _inputs()
    z, tan, eps = (1 - t.reshape(-1, 1, 1)) * x + t.reshape(-1, 1, 1) * e, e - x, 1e-6

    def along(s):
        return np_u(p, z + s * tan, t + s, (t + s) - r, y)

    fd = (along(eps) - along(-eps)) / (2 * eps)
    np.testing.assert_allclose(np_du_dt(p, z, t, t - r, y, tan), fd, rtol=1e-7, atol=1e-8)


# Wrong formulas: each one, put into the torch objective, makes the oracle comparison fail.
def _wrong(name):
    if name in CONTROLS:
        return CONTROLS[name].objective()
    original = tobj.cond_drop

    def drop_last(v, v_g, y, drop_mask, null_y):  # the LAST num_drop samples dropped
        return original(v, v_g, y, torch.flip(drop_mask, [0]), null_y)

    @contextlib.contextmanager
    def patched():
        tobj.cond_drop = drop_last
        try:
            yield
        finally:
            tobj.cond_drop = original

    return patched()


@pytest.mark.parametrize("name, fails", [
    ("zero_z_tangent", {"du_dt", "u_tgt", "loss_per_sample", "loss", "weight", "grad_W2"}),
    ("autograd_wrt_t", {"du_dt", "u_tgt", "loss_per_sample", "loss", "weight", "grad_W2"}),
    ("no_stop_gradient", {"grad_W2"}),
    ("guidance_window_ignored", {"du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "weight", "grad_W2"}),
    ("drop_last", set(TERMS) | {"grad_W2"}),
])
def test_oracle_catches_wrong_formulas(name, fails):
    p, inputs = _params(), _inputs()
    ref = oracle(p, *inputs, BASE)
    with _wrong(name):
        got = run_torch(p, inputs, BASE)
    failed = {k for k in ref if not np.allclose(got[k], ref[k], rtol=1e-12, atol=1e-12)}
    assert failed == fails
