"""Each error of the seed porting guide (SPEC section 4) shown to be an error, in float64 on
closed-form or small random networks, next to what this project does instead."""
import math

import pytest
import torch

from meanflow_common.config import FLOWER_PRESETS, MeanFlowConfig
from torch_meanflow import policy as policy_module
from torch_meanflow.objective import meanflow_loss, sample_noise, sample_tr
from torch_meanflow.policy import FlowerPolicy
from torch_meanflow.solver import generate

F64 = torch.float64
CFG = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.0)


class Net(torch.nn.Module):
    """u(z, t, h) on [B, T, A] data: an MLP on [z, t, h] per window position, random weights."""

    def __init__(self, a=3, hidden=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(a + 2, hidden, generator=g, dtype=F64))
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(torch.randn(hidden, a, generator=g, dtype=F64) / 4)

    def forward(self, z, t, h, y=None, train=False):
        b, n, _ = z.shape
        th = torch.stack([t, h], dim=-1)[:, None, :].expand(b, n, 2)
        return torch.tanh(torch.cat([z, th], dim=-1) @ self.w1 + self.b1) @ self.w2


def _problem(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 5, 3, generator=g, dtype=F64)
    noise = sample_noise(x.shape, CFG, generator=g, dtype=F64)
    z = (1 - noise.t[:, None, None]) * x + noise.t[:, None, None] * noise.e
    return x, noise, z, noise.e - x


def _total_derivative_fd(net, z, t, r, v, eps=1e-6):
    """Central difference along the flow: z moves with v, t with 1, r stays (h = t - r)."""
    with torch.no_grad():
        plus = net(z + eps * v, t + eps, t + eps - r)
        minus = net(z - eps * v, t - eps, t - eps - r)
    return (plus - minus) / (2 * eps)


def test_error1_second_jvp_with_zero_z_tangent_is_not_the_total_derivative():
    net = Net()
    x, noise, z, v = _problem()
    t, r = noise.t, noise.r

    def u_func(z_, t_, r_):
        return net(z_, t_, t_ - r_)

    ones, zeros = torch.ones_like(t), torch.zeros_like(r)
    # The guide, section 5 (and its closing "DO use this pattern"): the z tangent is zero.
    _, dudt_guide = torch.func.jvp(u_func, (z, t, r), (torch.zeros_like(v), ones, zeros))
    expect = _total_derivative_fd(net, z, t, r, v)
    ours = meanflow_loss(net, x, None, noise, CFG).du_dt
    assert torch.allclose(ours, expect, rtol=1e-7, atol=1e-9)
    gap = (dudt_guide - expect).abs().max()
    assert gap > 0.1 * expect.abs().max(), gap  # not a rounding difference
    # What the guide's JVP is: the partial derivative at fixed z, i.e. the total one minus
    # the z-direction term (du/dz) v.
    _, du_dz_v = torch.func.jvp(u_func, (z, t, r), (v, torch.zeros_like(t), zeros))
    assert torch.allclose(dudt_guide, expect - du_dz_v, rtol=1e-7, atol=1e-9)


def test_error3_autograd_grad_wrt_t_is_a_summed_partial_derivative():
    net = Net()
    x, noise, z, v = _problem()
    t = noise.t.clone().requires_grad_(True)
    r = noise.r
    u = net(z, t, t - noise.r)
    (g,) = torch.autograd.grad(u, t, grad_outputs=torch.ones_like(u))
    total = _total_derivative_fd(net, z, noise.t, r, v)
    # One number per sample, not a [B, T, A] derivative ...
    assert g.shape == t.shape != total.shape
    # ... and that number is the element sum of the PARTIAL derivative (z held fixed) ...
    _, partial = torch.func.jvp(lambda tt: net(z, tt, tt - r), (noise.t,), (torch.ones_like(noise.t),))
    assert torch.allclose(g, partial.sum(dim=(1, 2)), rtol=1e-10)
    # ... which is neither the total derivative summed nor recoverable per element.
    assert not torch.allclose(g, total.sum(dim=(1, 2)), rtol=1e-3)
    assert not torch.allclose(partial, total, rtol=1e-3)


def test_error2_mask_reshaped_to_b1_broadcasts_r_to_bxb():
    b, proportion = 8, 0.75
    gen = torch.Generator().manual_seed(0)
    t0, r0 = torch.rand(b, generator=gen, dtype=F64), torch.rand(b, generator=gen, dtype=F64)
    t, r = torch.maximum(t0, r0), torch.minimum(t0, r0)
    # The guide, section 6:
    zero_mask = (torch.arange(b) < int(b * proportion)).view(b, 1)
    r_guide = torch.where(zero_mask, t, r)
    assert r_guide.shape == (b, b)  # silently [b, b]: row i is t (i < 6) or r for every j
    assert torch.equal(r_guide[0], t) and torch.equal(r_guide[-1], r)
    assert (t - r_guide).shape == (b, b)  # and h = t - r is [b, b] too
    # This project: shapes stay [b], the first floor(b * p) samples get r = t.
    t_ok, r_ok = sample_tr(b, MeanFlowConfig(data_proportion=proportion), generator=gen, dtype=F64)
    assert t_ok.shape == r_ok.shape == (b,)
    assert torch.equal(t_ok[:6], r_ok[:6]) and torch.all(t_ok[6:] > r_ok[6:])


def test_error4_clamping_samples_is_only_valid_for_normalised_actions():
    """With the exact average velocity, MeanFlow lands on the data; a clamp to [-1, 1] then
    destroys every action outside that range. The policy clamps only on request."""
    target = torch.tensor([[2.5, -4.0, 0.3]], dtype=F64)  # raw (unnormalised) actions

    def exact_u(z, t, h, y, train):
        return (z - target) / t[:, None, None]

    e = torch.randn(6, 1, 3, dtype=F64)
    x = generate(exact_u, e, None)
    assert torch.allclose(x, target.expand_as(x), atol=1e-12)
    assert not torch.allclose(x.clamp(-1, 1), target.expand_as(x))  # the guide's clamp
    tiny = FLOWER_PRESETS["tiny"]
    assert FlowerPolicy(tiny, obs_dim=2).clip_actions is False  # default: no clamp
    assert FlowerPolicy(tiny, obs_dim=2, clip_actions=True).clip_actions is True
    doc = policy_module.__doc__
    assert "clip_actions" in doc and "normalised to [-1, 1]" in doc


@pytest.mark.parametrize("b", [3, 10])
def test_our_times_stay_batch_shaped_in_the_loss(b):
    """Companion to error 2: every per-sample quantity of the loss is [B]."""
    x = torch.randn(b, 4, 3, dtype=F64)
    noise = sample_noise(x.shape, MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0), generator=torch.Generator().manual_seed(1), dtype=F64)
    out = meanflow_loss(Net(), x, None, noise, MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0))
    for name in ("loss_per_sample", "v_loss", "weight"):
        assert getattr(out, name).shape == (b,)
    assert out.u.shape == out.du_dt.shape == out.u_tgt.shape == x.shape
    assert math.isfinite(out.loss.item())
