"""The PyTorch MeanFlow objective: derivatives, sampling of (t, r), guidance, loss formula,
gradients, the memory-saving path and input errors. Float64 where derivatives are compared."""
import math

import numpy as np
import pytest
import torch

from meanflow_common.config import MeanFlowConfig, override
from torch_meanflow.objective import (
    MeanFlowNoise,
    cond_drop,
    flow_matching_loss,
    JVP_ENGINES,
    guidance_velocity,
    jvp_engine,
    meanflow_loss,
    sample_noise,
    sample_tr,
)

F64 = torch.float64
NO_GUIDE = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class ClosedForm:
    """u(z, t, h, y) = A z sin t + B h z^2 + C h cos t + D y, elementwise; every partial
    derivative is known in closed form."""

    def __init__(self, shape, seed=0):
        g = _gen(seed)
        self.A, self.B, self.C, self.D = (torch.randn(shape, generator=g, dtype=F64) for _ in range(4))

    def _b(self, a, z):
        return a.reshape(-1, *([1] * (z.dim() - 1)))

    def __call__(self, z, t, h, y, train):
        t, h, y = self._b(t, z), self._b(h, z), self._b(y.to(z.dtype), z)
        return self.A * z * torch.sin(t) + self.B * h * z**2 + self.C * h * torch.cos(t) + self.D * y

    def total_derivative(self, z, t, h, tangent):
        """d/ds u(z + s tangent, t + s, h + s) at s = 0 (h = t - r, r fixed)."""
        t, h = self._b(t, z), self._b(h, z)
        du_dz = self.A * torch.sin(t) + 2 * self.B * h * z
        du_dt = self.A * z * torch.cos(t) - self.C * h * torch.sin(t)
        du_dh = self.B * z**2 + self.C * torch.cos(t)
        return du_dz * tangent + du_dt + du_dh


class TinyNet(torch.nn.Module):
    """MLP on [z, t, h, y]; every parameter random (no zero-init layer)."""

    def __init__(self, dim=6, hidden=16, dropout=0.0):
        super().__init__()
        self.inp = torch.nn.Linear(dim + 3, hidden)
        self.drop = torch.nn.Dropout(dropout)
        self.out = torch.nn.Linear(hidden, dim)

    def forward(self, z, t, h, y, train):
        self.train(train)
        feats = torch.cat([z.flatten(1), t[:, None], h[:, None], y.to(z.dtype)[:, None]], dim=1)
        return self.out(self.drop(torch.tanh(self.inp(feats)))).reshape(z.shape)


def _setup(cfg, shape=(5, 2, 3), seed=0):
    x = torch.randn(shape, generator=_gen(seed + 100), dtype=F64)
    y = torch.arange(shape[0]) % 3
    noise = sample_noise(shape, cfg, generator=_gen(seed), dtype=F64)
    return x, y, noise


# ----------------------------------------------------------------------------------
# du/dt is the total derivative
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance", ["", "cfg"])
def test_du_dt_matches_closed_form_total_derivative(guidance):
    cfg = MeanFlowConfig(guidance_eq=guidance, data_proportion=0.0, class_dropout_prob=0.0, kappa=0.3, omega=1.7)
    x, y, noise = _setup(cfg)
    u_fn = ClosedForm(x.shape[1:])
    out = meanflow_loss(u_fn, x, y, noise, cfg, null_y=3)
    z_t = (1 - noise.t[:, None, None]) * x + noise.t[:, None, None] * noise.e
    expect = u_fn.total_derivative(z_t, noise.t, noise.t - noise.r, out.v_g)
    assert torch.allclose(out.du_dt, expect, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out.v_g, out.v) if guidance else torch.equal(out.v_g, out.v)


def test_du_dt_matches_central_finite_differences_on_network():
    torch.manual_seed(0)
    net = TinyNet().double()
    cfg = override(NO_GUIDE, {"data_proportion": 0.0})
    x, y, noise = _setup(cfg)
    out = meanflow_loss(net, x, y, noise, cfg)
    t, r, v = noise.t, noise.r, out.v_g
    z_t = (1 - t[:, None, None]) * x + t[:, None, None] * noise.e
    eps = 1e-5
    with torch.no_grad():
        plus = net(z_t + eps * v, t + eps, t + eps - r, y, True)
        minus = net(z_t - eps * v, t - eps, t - eps - r, y, True)
    fd = (plus - minus) / (2 * eps)
    assert torch.allclose(out.du_dt, fd, rtol=1e-7, atol=1e-8)
    assert out.du_dt.abs().max() > 1e-2  # not vacuous


def test_tangent_v_option_uses_plain_velocity():
    cfg = MeanFlowConfig(data_proportion=0.0, class_dropout_prob=0.0, omega=2.0, kappa=0.0, tangent="v")
    x, y, noise = _setup(cfg)
    u_fn = ClosedForm(x.shape[1:])
    out = meanflow_loss(u_fn, x, y, noise, cfg, null_y=3)
    z_t = (1 - noise.t[:, None, None]) * x + noise.t[:, None, None] * noise.e
    assert torch.allclose(out.du_dt, u_fn.total_derivative(z_t, noise.t, noise.t - noise.r, out.v), atol=1e-12)
    assert not torch.allclose(out.du_dt, u_fn.total_derivative(z_t, noise.t, noise.t - noise.r, out.v_g))


# ----------------------------------------------------------------------------------
# Sampling t, r and the noise
# ----------------------------------------------------------------------------------


def test_sample_tr_first_mask_shapes_and_order():
    cfg = MeanFlowConfig(data_proportion=0.75)
    t, r = sample_tr(10, cfg, generator=_gen(), dtype=F64)
    assert t.shape == (10,) and r.shape == (10,) and t.dtype == F64
    assert torch.all(t >= r)
    assert torch.equal(t[:7], r[:7])  # floor(10 * 0.75) = 7
    assert torch.all(t[7:] > r[7:])


def test_sample_tr_statistics():
    n = 20000
    t, r = sample_tr(n, MeanFlowConfig(data_proportion=0.0), generator=_gen(1), dtype=F64)
    # t = max of two logit-normal draws: P(t <= sigmoid(P_mean)) = 1/4, P(r <= it) = 3/4.
    med = 1 / (1 + math.exp(0.4))
    assert abs((t <= med).double().mean().item() - 0.25) < 0.02
    assert abs((r <= med).double().mean().item() - 0.75) < 0.02
    t, r = sample_tr(n, MeanFlowConfig(noise_dist="uniform", data_proportion=0.0), generator=_gen(2))
    assert abs(t.mean().item() - 2 / 3) < 0.01 and abs(r.mean().item() - 1 / 3) < 0.01


@pytest.mark.parametrize("sampler, expect", [("v0", 0.75), ("v1", 0.75 + 0.25 / 2)])
def test_sample_tr_random_mask_samplers(sampler, expect):
    cfg = MeanFlowConfig(rt_mask="random", tr_sampler=sampler, data_proportion=0.75)
    t, r = sample_tr(20000, cfg, generator=_gen(3), dtype=F64)
    assert t.shape == (20000,) and torch.all(t >= r)
    assert abs((t == r).double().mean().item() - expect) < 0.015
    assert not torch.all((t == r)[:100])  # a random subset, not the first fraction
    # v0: t is the max of two draws; v1: t keeps its own draw (logit mean P_mean = -0.4)
    logit_mean = torch.logit(t).mean().item()
    assert abs(logit_mean - (-0.4 + 1 / math.sqrt(math.pi) if sampler == "v0" else -0.4)) < 0.03


def test_sample_noise_drop_counts():
    for p, lo, hi in ((0.0, 0, 0), (1.0, 1000, 1000), (0.3, 240, 360)):
        noise = sample_noise((1000, 2), MeanFlowConfig(class_dropout_prob=p), generator=_gen(4))
        k = int(noise.drop_mask.sum())
        assert lo <= k <= hi
        assert noise.drop_mask.dtype == torch.bool and noise.drop_mask.shape == (1000,)
        assert torch.all(noise.drop_mask[:k]) and not torch.any(noise.drop_mask[k:])
    noise = noise.to(dtype=F64)
    assert noise.e.dtype == F64 and noise.drop_mask.dtype == torch.bool


# ----------------------------------------------------------------------------------
# Guidance and class dropout against hand computation
# ----------------------------------------------------------------------------------


def _label_net(z, t, h, y, train):
    """u = z (y + 1) (1 + t) + h: a label-dependent closed form for hand computation."""
    b = (-1,) + (1,) * (z.dim() - 1)
    return z * (y.to(z.dtype).reshape(b) + 1) * (1 + t.reshape(b)) + h.reshape(b)


@pytest.mark.parametrize("kappa", [0.0, 0.4])
def test_guidance_velocity_by_hand(kappa):
    cfg = MeanFlowConfig(omega=2.5, kappa=kappa, t_start=0.3, t_end=0.8)
    z = np.random.default_rng(0).normal(size=(4, 3))
    v = np.random.default_rng(1).normal(size=(4, 3))
    t = np.array([0.1, 0.3, 0.5, 0.9])
    y = np.array([0, 1, 2, 1])
    null = 7
    got = guidance_velocity(_label_net, torch.tensor(v), torch.tensor(z), torch.tensor(t), torch.tensor(y), cfg, null)
    v_unc = z * (null + 1) * (1 + t)[:, None]
    v_con = z * (y + 1)[:, None] * (1 + t)[:, None]
    inside = (t >= 0.3) & (t <= 0.8)
    om = np.where(inside, 2.5, 1.0)[:, None]
    ka = np.where(inside, kappa, 0.0)[:, None]
    expect = v_unc + om * (v - v_unc) if kappa == 0 else om * v + (1 - om - ka) * v_unc + ka * v_con
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-13)
    assert not np.allclose(expect, v)


def test_cond_drop_by_hand():
    v, v_g = torch.zeros(4, 2), torch.ones(4, 2)
    y = torch.tensor([3, 1, 2, 0])
    mask = torch.tensor([True, True, False, False])
    y_inp, vg = cond_drop(v, v_g, y, mask, null_y=10)
    assert y_inp.tolist() == [10, 10, 2, 0]
    assert vg.tolist() == [[0, 0], [0, 0], [1, 1], [1, 1]]
    tokens = object()  # non-tensor conditioning passes through when nothing is dropped
    y_inp, _ = cond_drop(v, v_g, tokens, torch.zeros(4, dtype=torch.bool), null_y=None)
    assert y_inp is tokens
    with pytest.raises(ValueError, match="null_y is None"):
        cond_drop(v, v_g, y, mask, null_y=None)


def test_dropped_samples_use_null_label_and_plain_velocity():
    cfg = MeanFlowConfig(class_dropout_prob=0.5, data_proportion=0.0, omega=3.0, kappa=0.0)
    x, y, noise = _setup(cfg, shape=(8, 2, 3))
    k = int(noise.drop_mask.sum())
    assert 0 < k < 8
    seen = []

    def u_fn(z, t, h, yy, train):
        if train:
            seen.append(yy.clone())
        return _label_net(z, t, h, yy, train)

    out = meanflow_loss(u_fn, x, y, noise, cfg, null_y=3)
    assert torch.equal(seen[0][:k], torch.full((k,), 3)) and torch.equal(seen[0][k:], y[k:])
    assert torch.equal(out.v_g[:k], out.v[:k]) and not torch.allclose(out.v_g[k:], out.v[k:])


# ----------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------


def test_r_equals_t_gives_u_tgt_equal_v_g():
    cfg = MeanFlowConfig(data_proportion=1.0, class_dropout_prob=0.0)
    x, y, noise = _setup(cfg)
    out = meanflow_loss(ClosedForm(x.shape[1:]), x, y, noise, cfg, null_y=3)
    assert torch.equal(noise.t, noise.r)
    assert torch.equal(out.u_tgt, out.v_g)
    assert out.du_dt.abs().max() > 0  # the derivative exists; its weight h is 0


@pytest.mark.parametrize("clip_h, norm_p", [(True, 1.0), (False, 0.5)])
def test_loss_matches_numpy_formula(clip_h, norm_p):
    cfg = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.4, clip_h=clip_h, norm_p=norm_p)
    x, y, noise = _setup(cfg)
    u_fn = ClosedForm(x.shape[1:])
    out = meanflow_loss(u_fn, x, y, noise, cfg)
    X, E, T, R = (a.numpy() for a in (x, noise.e, noise.t, noise.r))
    A, B, C, D = (a.numpy() for a in (u_fn.A, u_fn.B, u_fn.C, u_fn.D))
    tb, hb, yb = T[:, None, None], (T - R)[:, None, None], y.numpy()[:, None, None]
    z = (1 - tb) * X + tb * E
    v = E - X
    u = A * z * np.sin(tb) + B * hb * z**2 + C * hb * np.cos(tb) + D * yb
    dudt = (A * np.sin(tb) + 2 * B * hb * z) * v + A * z * np.cos(tb) - C * hb * np.sin(tb) + B * z**2 + C * np.cos(tb)
    coef = np.clip(hb, 0, 1) if clip_h else hb
    u_tgt = v - coef * dudt
    L = ((u - u_tgt) ** 2).sum(axis=(1, 2))
    w = (L + cfg.norm_eps) ** norm_p
    np.testing.assert_allclose(out.u.detach().numpy(), u, rtol=1e-12)
    np.testing.assert_allclose(out.u_tgt.numpy(), u_tgt, rtol=1e-11)
    np.testing.assert_allclose(out.loss_per_sample.detach().numpy(), L, rtol=1e-11)
    np.testing.assert_allclose(out.weight.numpy(), w, rtol=1e-11)
    np.testing.assert_allclose(out.loss.item(), np.mean(L / w), rtol=1e-11)
    np.testing.assert_allclose(out.v_loss.numpy(), ((u - v) ** 2).sum(axis=(1, 2)), rtol=1e-11)


@pytest.mark.parametrize("engine", JVP_ENGINES)
def test_gradient_through_jvp_primal_equals_explicit_loss(engine):
    """The gradient is that of sum (u - u_tgt)^2 / w with u_tgt and w held fixed, under each
    JVP engine (torch.func.jvp's tangent carries an autograd graph: only the detach stops it)."""
    torch.manual_seed(1)
    net = TinyNet().double()
    cfg = MeanFlowConfig(data_proportion=0.4, class_dropout_prob=0.3, omega=1.5)
    x, y, noise = _setup(cfg, seed=5)
    with jvp_engine(engine):
        out = meanflow_loss(net, x, y, noise, cfg, null_y=3)
    out.loss.backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    # Same loss without any JVP: u from a plain forward, u_tgt and weights held constant.
    y_inp = torch.where(noise.drop_mask, 3, y)
    z_t = (1 - noise.t[:, None, None]) * x + noise.t[:, None, None] * noise.e
    u = net(z_t, noise.t, noise.t - noise.r, y_inp, True)
    L = ((u - out.u_tgt) ** 2).sum(dim=(1, 2))
    (L / out.weight).mean().backward()
    for g, p in zip(got, net.parameters()):
        err = (g - p.grad).abs().max().item()
        assert torch.allclose(g, p.grad, rtol=1e-12, atol=1e-14), f"{engine}: gradient off by {err:.3e}"
    assert all(g.abs().max() > 0 for g in got)
    # The check can fail: the loss's total derivative (target included, no stop-gradient),
    # here a central difference in one weight, is a different number.
    w = net.out.weight
    eps = 1e-6

    def loss_at(delta):
        with torch.no_grad():
            w[0, 0] += delta
        with jvp_engine(engine):
            value = meanflow_loss(net, x, y, noise, cfg, null_y=3).loss.item()
        with torch.no_grad():
            w[0, 0] -= delta
        return value

    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(fd - got[2][0, 0].item()) > 1e-3 * max(1.0, abs(fd))


def test_memory_saving_path_equals_plain_path_with_dropout():
    net = TinyNet(hidden=32, dropout=0.5).double()
    cfg = override(NO_GUIDE, {"data_proportion": 0.2})
    x, y, noise = _setup(cfg, seed=7)
    results = []
    for path, seed in (("jvp", 0), ("memory_saving", 0), ("jvp", 1)):
        net.zero_grad()
        torch.manual_seed(seed)
        out = meanflow_loss(net, x, y, noise, override(cfg, {"jvp_path": path}))
        out.loss.backward()
        results.append((out, [p.grad.clone() for p in net.parameters()]))
    (plain, g_plain), (saving, g_saving), (other, _) = results
    assert not torch.allclose(plain.loss, other.loss)  # dropout is active: masks matter
    assert torch.allclose(plain.loss, saving.loss, rtol=1e-13)
    assert torch.allclose(plain.du_dt, saving.du_dt, rtol=1e-12, atol=1e-14)
    for a, b in zip(g_plain, g_saving):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_flow_matching_loss_is_meanflow_at_h_zero():
    cfg = MeanFlowConfig(data_proportion=1.0, class_dropout_prob=0.25, omega=2.0)
    x, y, noise = _setup(cfg, shape=(8, 2, 3))
    net = TinyNet().double()
    fm = flow_matching_loss(net, x, y, noise, cfg, null_y=3)
    mf = meanflow_loss(net, x, y, noise, cfg, null_y=3)
    assert torch.equal(fm.du_dt, torch.zeros_like(fm.du_dt))
    assert torch.equal(fm.u_tgt, fm.v_g)
    assert torch.allclose(fm.loss, mf.loss, rtol=1e-13)
    # with r < t the flow-matching baseline still uses h = 0 and ignores r
    noise2 = MeanFlowNoise(noise.e, noise.t, noise.t * 0.5, noise.drop_mask)
    assert torch.allclose(flow_matching_loss(net, x, y, noise2, cfg, null_y=3).loss, fm.loss, rtol=1e-13)


def test_float32_works_and_keeps_dtype():
    net = TinyNet()
    cfg = MeanFlowConfig(class_dropout_prob=0.5)
    x = torch.randn(6, 2, 3)
    noise = sample_noise(x.shape, cfg, generator=_gen())
    out = meanflow_loss(net, x, torch.zeros(6, dtype=torch.long), noise, cfg, null_y=3)
    assert out.u.dtype == torch.float32 and out.du_dt.dtype == torch.float32 and torch.isfinite(out.loss)


# ----------------------------------------------------------------------------------
# Input errors
# ----------------------------------------------------------------------------------


def test_input_errors():
    x, y, noise = _setup(NO_GUIDE)
    net = ClosedForm(x.shape[1:])
    bad_r = noise.r.clone()
    bad_r[[1, 3]] = noise.t[[1, 3]] + 0.1
    with pytest.raises(ValueError, match=r"t < r at indices \[1, 3\]"):
        meanflow_loss(net, x, y, MeanFlowNoise(noise.e, noise.t, bad_r, noise.drop_mask), NO_GUIDE)
    with pytest.raises(ValueError, match="noise.e has shape"):
        meanflow_loss(net, x[:, :1], y, noise, NO_GUIDE)
    with pytest.raises(ValueError, match=r"noise.t must have shape \[B\]"):
        meanflow_loss(net, x, y, MeanFlowNoise(noise.e, noise.t[:, None], noise.r, noise.drop_mask), NO_GUIDE)
    with pytest.raises(TypeError, match="dtype"):
        meanflow_loss(net, x.float(), y, noise.to(dtype=F64), NO_GUIDE)
    with pytest.raises(ValueError, match="needs null_y"):
        meanflow_loss(net, x, y, noise, MeanFlowConfig(class_dropout_prob=0.0), null_y=None)
