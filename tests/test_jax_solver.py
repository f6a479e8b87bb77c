"""MeanFlow sampling in JAX: schedules, single steps, 1-NFE identity, multi-step loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_meanflow.solver import generate, make_generate, sampling_schedule, solver_step

jax.config.update("jax_enable_x64", True)

B, SHAPE, K = 4, (3, 3, 2), 3


def _params(seed=0):
    rng = np.random.default_rng(seed)
    d = int(np.prod(SHAPE))
    return {"A": jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d)), "b": jnp.asarray(rng.normal(size=SHAPE)),
            "c": jnp.asarray(rng.normal(size=(K + 1,) + SHAPE))}


def _u(p, z, t, h, y, train):
    """A closed-form average velocity, nonlinear in z, t and h, depending on y."""
    assert not train, "sampling must call the network with train=False"
    s = jnp.tanh(z.reshape(z.shape[0], -1) @ p["A"]).reshape(z.shape)
    return s * (1 + t[:, None, None, None]) + p["b"] * jnp.cos(2 * h[:, None, None, None]) + p["c"][y]


def _data(seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(B,) + SHAPE)), jnp.asarray(rng.integers(0, K, size=B))


def test_sampling_schedule():
    s = sampling_schedule(4, jnp.float64)
    np.testing.assert_array_equal(np.asarray(s), [1.0, 0.75, 0.5, 0.25, 0.0])
    assert s.dtype == jnp.float64 and sampling_schedule(1).dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(sampling_schedule(1)), [1.0, 0.0])
    with pytest.raises(ValueError, match="num_steps"):
        sampling_schedule(0)


def test_one_step_is_e_minus_u_at_t1_h1():
    p = _params()
    e, y = _data()
    u_fn = lambda *a: _u(p, *a)  # noqa: E731
    x = generate(u_fn, e, y)
    ones = jnp.ones((B,), e.dtype)
    np.testing.assert_allclose(np.asarray(x), np.asarray(e - _u(p, e, ones, ones, y, False)), rtol=1e-13, atol=1e-13)
    assert x.shape == e.shape and x.dtype == jnp.float64


def test_two_steps_equal_two_manual_solver_steps():
    p = _params()
    e, y = _data()
    u_fn = lambda *a: _u(p, *a)  # noqa: E731
    full = lambda v: jnp.full((B,), v, e.dtype)  # noqa: E731
    z = e
    for t, r in [(1.0, 0.5), (0.5, 0.0)]:
        u = _u(p, z, full(t), full(t - r), y, False)
        z = z - (t - r) * u
    np.testing.assert_allclose(np.asarray(generate(u_fn, e, y, num_steps=2)), np.asarray(z), rtol=1e-13, atol=1e-13)
    # solver_step itself, with per-sample times
    t, r = jnp.asarray([1.0, 0.8, 0.6, 0.3]), jnp.asarray([0.5, 0.8, 0.0, 0.1])
    want = e - (t - r)[:, None, None, None] * _u(p, e, t, t - r, y, False)
    np.testing.assert_allclose(np.asarray(solver_step(u_fn, e, t, r, y)), np.asarray(want), rtol=1e-13)
    # a multi-step result is not the 1-step one (the loop really runs)
    assert float(jnp.max(jnp.abs(generate(u_fn, e, y, num_steps=2) - generate(u_fn, e, y)))) > 1e-3


def test_custom_schedule_jit_and_make_generate():
    p = _params()
    e, y = _data()
    sched = jnp.asarray([1.0, 0.7, 0.2, 0.0])
    eager = generate(lambda *a: _u(p, *a), e, y, schedule=sched)
    jitted = jax.jit(lambda p, e: generate(lambda *a: _u(p, *a), e, y, schedule=sched))(p, e)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-12)
    sample = make_generate(lambda p: (lambda *a: _u(p, *a)), num_steps=3)
    np.testing.assert_allclose(np.asarray(sample(p, e, y)), np.asarray(generate(lambda *a: _u(p, *a), e, y, 3)),
                               rtol=1e-12)


def test_bad_inputs():
    p = _params()
    e, y = _data()
    u_fn = lambda *a: _u(p, *a)  # noqa: E731
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        solver_step(u_fn, e, jnp.ones((B, 1)), jnp.zeros((B, 1)), y)
    with pytest.raises(ValueError, match="decrease"):
        generate(u_fn, e, y, schedule=jnp.asarray([0.0, 1.0]))


@pytest.mark.parametrize("num_steps", [3, 5])
def test_multi_step_schedule_is_even_from_1_to_0(num_steps):
    """num_steps steps of h = 1 / num_steps: t_i = 1 - i / num_steps, r_i = t_{i+1}, each
    step z <- z - (t - r) u(z, t, t - r). A wrong schedule (uneven, or h = t) gives another x."""
    p = _params()
    e, y = _data()
    full = lambda v: jnp.full((B,), v, e.dtype)  # noqa: E731

    def manual(times, h_of=lambda t, r: t - r):
        z = e
        for t, r in zip(times[:-1], times[1:]):
            z = z - (t - r) * _u(p, z, full(t), full(h_of(t, r)), y, False)
        return np.asarray(z)

    even = [1 - i / num_steps for i in range(num_steps + 1)]
    got = np.asarray(generate(lambda *a: _u(p, *a), e, y, num_steps=num_steps))
    np.testing.assert_allclose(got, manual(even), rtol=1e-13, atol=1e-13)
    geometric = [1.0] + [0.5 ** (i + 1) for i in range(num_steps - 1)] + [0.0]
    assert np.max(np.abs(got - manual(geometric))) > 1e-3
    assert np.max(np.abs(got - manual(even, h_of=lambda t, r: t))) > 1e-3
