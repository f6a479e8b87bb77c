"""AdamW + EMA training state in JAX: the first update by hand, EMA formula, warm-up, clipping,
and a tiny MeanFlow problem whose loss goes down."""
import pytest
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax_meanflow.objective import MeanFlowNoise, meanflow_loss
from jax_meanflow.train_state import TrainState, create_train_state, make_lr_schedule, make_train_step, train_step
from meanflow_common.config import MeanFlowConfig, OptimConfig

jax.config.update("jax_enable_x64", True)

B, D, K = 8, 4, 3
CFG = MeanFlowConfig(omega=1.5, kappa=0.2, norm_p=0.5)
NULL = jnp.full((B,), K)


def _u(p, z, t, h, y, train):
    return jnp.tanh(z @ p["A"] + p["a"]) * (1 + t[:, None]) + p["b"] * h[:, None] + p["c"][y]


def _loss_fn(params, batch, noise):
    x, y = batch
    out = meanflow_loss(lambda *a: _u(params, *a), x, y, noise, CFG, null_y=NULL)
    return out.loss, out


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    params = {"A": rng.normal(size=(D, D)) * 0.5, "a": rng.normal(size=D), "b": rng.normal(size=D),
              "c": rng.normal(size=(K + 1, D))}
    params = jax.tree.map(jnp.asarray, params)
    x = jnp.asarray(rng.normal(size=(B, D)) * 0.5 + 1.0)
    y = jnp.asarray(rng.integers(0, K, size=B))
    a, b = rng.uniform(size=B), rng.uniform(size=B)
    t, r = np.maximum(a, b), np.minimum(a, b)
    r[:4] = t[:4]
    noise = MeanFlowNoise(e=jnp.asarray(rng.normal(size=(B, D))), t=jnp.asarray(t), r=jnp.asarray(r),
                          drop_mask=jnp.arange(B) < 1)
    return params, (x, y), noise


@pytest.mark.heavy
def test_first_step_is_adamw_by_hand_and_ema_formula():
    params, batch, noise = _setup()
    ocfg = OptimConfig(lr=1e-2, weight_decay=0.1, ema_decay=0.9)
    state = create_train_state(params, ocfg)
    assert isinstance(state, TrainState) and int(state.step) == 0
    grads = jax.grad(lambda p: _loss_fn(p, batch, noise)[0])(params)
    new, metrics = train_step(state, _loss_fn, batch, noise, ocfg)
    for k in params:
        g, p0 = np.asarray(grads[k]), np.asarray(params[k])
        # bias-corrected first Adam step: m_hat = g, sqrt(v_hat) = |g|; decoupled weight decay
        want = p0 - 1e-2 * (g / (np.abs(g) + ocfg.eps) + 0.1 * p0)
        np.testing.assert_allclose(np.asarray(new.params[k]), want, rtol=1e-10, atol=1e-12, err_msg=k)
        np.testing.assert_allclose(np.asarray(new.ema_params[k]), 0.9 * p0 + 0.1 * want, rtol=1e-12)
        assert new.params[k].dtype == jnp.float64 and new.ema_params[k].dtype == jnp.float64
    assert int(new.step) == 1
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-12)
    weighted, out = _loss_fn(params, batch, noise)
    # the optimised (adaptive-weighted, norm_p 0.5) loss and the unweighted one a user reads differ here
    np.testing.assert_allclose(float(metrics["weighted_loss"]), float(weighted), rtol=1e-12)
    np.testing.assert_allclose(float(metrics["loss"]), float(np.mean(out.loss_per_sample)), rtol=1e-12)
    assert abs(float(metrics["loss"]) - float(weighted)) > 0.1 * float(weighted)
    assert set(metrics) == {"loss", "v_loss", "weighted_loss", "grad_norm", "lr"}
    assert float(metrics["lr"]) == 1e-2 and metrics["v_loss"].shape == ()
    # second step: EMA follows ema = d * ema + (1 - d) * params again
    newer, _ = train_step(new, _loss_fn, batch, noise, ocfg)
    for k in params:
        np.testing.assert_allclose(np.asarray(newer.ema_params[k]),
                                   0.9 * np.asarray(new.ema_params[k]) + 0.1 * np.asarray(newer.params[k]),
                                   rtol=1e-12)


def test_loss_decreases_on_a_tiny_problem():
    params, batch, noise = _setup(1)
    ocfg = OptimConfig(lr=3e-2, ema_decay=0.5)
    step = make_train_step(_loss_fn, ocfg)
    state = create_train_state(params, ocfg)
    losses = []
    for _ in range(20):
        state, m = step(state, batch, noise)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.7 * losses[0], losses
    assert int(state.step) == 20


def test_warmup_schedule_and_lr_metric():
    ocfg = OptimConfig(lr=0.4, warmup_steps=4)
    sched = make_lr_schedule(ocfg)
    np.testing.assert_allclose([float(sched(s)) for s in range(7)], [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4], rtol=1e-6)
    params, batch, noise = _setup()
    state = create_train_state(params, ocfg)
    lrs = []
    for _ in range(3):
        state, m = train_step(state, _loss_fn, batch, noise, ocfg)
        lrs.append(float(m["lr"]))
    np.testing.assert_allclose(lrs, [0.0, 0.1, 0.2], rtol=1e-6)


def test_global_norm_clip_engages():
    """Clipping to a tiny norm shrinks the first Adam step far below lr (eps dominates)."""
    params, batch, noise = _setup()
    ocfg = OptimConfig(lr=1e-2, grad_clip=1e-12)
    new, m = train_step(create_train_state(params, ocfg), _loss_fn, batch, noise, ocfg)
    step = max(float(jnp.max(jnp.abs(new.params[k] - params[k]))) for k in params)
    assert step < 1e-3 * 1e-2 and float(m["grad_norm"]) > 1e-3  # metric is the unclipped norm
