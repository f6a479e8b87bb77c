"""The PyTorch MeanFlow solver: schedule, one step, 1-NFE identity, exact transport."""
import pytest
import torch

from torch_meanflow.solver import generate, sampling_schedule, solver_step

F64 = torch.float64


class Recording:
    """A random closed-form u(z, t, h, y) that records its calls."""

    def __init__(self, shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.A, self.B = torch.randn(shape, generator=g, dtype=F64), torch.randn(shape, generator=g, dtype=F64)
        self.calls = []

    def __call__(self, z, t, h, y, train):
        self.calls.append((t.clone(), h.clone(), train))
        b = (-1,) + (1,) * (z.dim() - 1)
        return self.A * torch.tanh(z) * (1 + t.reshape(b)) + self.B * h.reshape(b) + y.to(z.dtype).reshape(b)


def test_sampling_schedule():
    s = sampling_schedule(4, dtype=F64)
    assert s.dtype == F64 and s.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert sampling_schedule(1).tolist() == [1.0, 0.0]
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="num_steps"):
            sampling_schedule(bad)


def test_solver_step_formula():
    u_fn = Recording((3,))
    z = torch.randn(4, 3, dtype=F64)
    t = torch.tensor([1.0, 0.8, 0.5, 0.3], dtype=F64)
    r = torch.tensor([0.0, 0.5, 0.5, 0.1], dtype=F64)
    y = torch.arange(4)
    out = solver_step(u_fn, z, t, r, y)
    expect = z - (t - r)[:, None] * u_fn(z, t, t - r, y, False)
    assert torch.allclose(out, expect, rtol=1e-15)
    assert u_fn.calls[0][2] is False and torch.equal(u_fn.calls[0][1], t - r)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
        solver_step(u_fn, z, t[:, None], r, y)


def test_one_step_generation_identity():
    u_fn = Recording((2, 3))
    e = torch.randn(5, 2, 3, dtype=F64)
    y = torch.arange(5)
    x = generate(u_fn, e, y)  # default 1 step
    ones = torch.ones(5, dtype=F64)
    assert torch.allclose(x, e - u_fn(e, ones, ones, y, False), rtol=1e-15)
    assert not x.requires_grad


def test_multi_step_generation_matches_manual_loop():
    u_fn = Recording((3,))
    e = torch.randn(4, 3, dtype=F64)
    y = torch.zeros(4, dtype=torch.long)
    x = generate(u_fn, e, y, num_steps=4)
    assert len(u_fn.calls) == 4
    for i, (t, h, _) in enumerate(u_fn.calls):
        assert t.shape == (4,) and torch.allclose(t, torch.full((4,), 1 - i / 4, dtype=F64))
        assert torch.allclose(h, torch.full((4,), 0.25, dtype=F64))
    z = e
    for i in range(4):
        t, r = 1 - i / 4, 1 - (i + 1) / 4
        z = z - (t - r) * u_fn(z, torch.full((4,), t, dtype=F64), torch.full((4,), t - r, dtype=F64), y, False)
    assert torch.allclose(x, z, rtol=1e-14)


@pytest.mark.parametrize("num_steps", [1, 3])
def test_exact_average_velocity_transports_noise_to_data(num_steps):
    """For data concentrated at c, the true average velocity is u(z_t, t, h) = (z_t - c) / t;
    any schedule then lands exactly on c."""
    c = torch.tensor([0.5, -2.0, 1.0], dtype=F64)

    def u_fn(z, t, h, y, train):
        return (z - c) / t[:, None]

    e = torch.randn(6, 3, dtype=F64)
    assert torch.allclose(generate(u_fn, e, None, num_steps=num_steps), c.expand(6, 3), atol=1e-14)


def test_explicit_schedule_and_its_errors():
    u_fn = Recording((3,))
    e = torch.randn(2, 3, dtype=F64)
    y = torch.zeros(2, dtype=torch.long)
    a = generate(u_fn, e, y, schedule=[1.0, 0.6, 0.0])
    b = solver_step(u_fn, solver_step(u_fn, e, torch.ones(2, dtype=F64), torch.full((2,), 0.6, dtype=F64), y),
                    torch.full((2,), 0.6, dtype=F64), torch.zeros(2, dtype=F64), y)
    assert torch.allclose(a, b, rtol=1e-15)
    for bad in ([1.0], [0.0, 1.0], [1.5, 0.0]):
        with pytest.raises(ValueError, match="schedule"):
            generate(u_fn, e, y, schedule=bad)
