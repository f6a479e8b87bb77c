"""Each error of the seed porting guide shown to be an error, in float64 on
closed-form or small random networks, next to what this project does instead."""
import math

import pytest
import torch

from meanflow_common.config import FLOWER_PRESETS, MeanFlowConfig
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
    """The project's objective forms du/dt as the total derivative; the same objective with
    du/dt taken by backward-mode autograd w.r.t. t (the injected control) gets one summed
    partial derivative per sample instead."""
    from parity.core.controls import OBJECTIVE_CONTROLS

    CONTROLS = {c.name: c for c in OBJECTIVE_CONTROLS}

    net = Net()
    x, noise, z, v = _problem()
    total = _total_derivative_fd(net, z, noise.t, noise.r, v)
    ours = meanflow_loss(net, x, None, noise, CFG).du_dt
    assert torch.allclose(ours, total, rtol=1e-7, atol=1e-9)
    with CONTROLS["autograd_wrt_t"].objective():
        guide = meanflow_loss(net, x, None, noise, CFG).du_dt
    _, partial = torch.func.jvp(lambda tt: net(z, tt, tt - noise.r), (noise.t,), (torch.ones_like(noise.t),))
    per_sample = partial.sum(dim=(1, 2))[:, None, None].expand_as(partial)
    assert torch.allclose(guide, per_sample, rtol=1e-10)  # one number per sample, broadcast
    assert (guide - total).abs().max() > 0.1 * total.abs().max()


def test_error2_times_stay_batch_shaped_and_b1_times_are_refused():
    """The guide reshapes the r = t mask to [b, 1], which broadcasts r to [b, b]. The project's
    sampler keeps [b] with the first floor(b p) samples at r = t, and its objective refuses
    times of any other shape, naming the field and the shape."""
    b, proportion = 8, 0.75
    gen = torch.Generator().manual_seed(0)
    t, r = sample_tr(b, MeanFlowConfig(data_proportion=proportion), generator=gen, dtype=F64)
    assert t.shape == r.shape == (b,)
    assert torch.equal(t[:6], r[:6]) and torch.all(t[6:] > r[6:])
    x = torch.randn(b, 5, 3, generator=gen, dtype=F64)
    noise = sample_noise(x.shape, CFG, generator=gen, dtype=F64)
    r_guide = torch.where((torch.arange(b) < 6).view(b, 1), noise.t, noise.r)  # the guide's [b, b]
    bad = type(noise)(e=noise.e, t=noise.t, r=r_guide, drop_mask=noise.drop_mask)
    with pytest.raises(ValueError, match=r"noise.r must have shape \[B\] = \(8,\), got \(8, 8\)"):
        meanflow_loss(Net(), x, None, bad, CFG)


def test_error4_clamping_samples_is_only_valid_for_normalised_actions():
    """With the exact average velocity, the project's 1-step solver lands on the data; the
    guide's clamp to [-1, 1] would destroy raw actions outside that range, so the policy
    clamps only on request (tests/test_torch_policy.py checks the flag's effect)."""
    target = torch.tensor([[2.5, -4.0, 0.3]], dtype=F64)  # raw (unnormalised) actions

    def exact_u(z, t, h, y, train):
        return (z - target) / t[:, None, None]

    e = torch.randn(6, 1, 3, dtype=F64)
    x = generate(exact_u, e, None)
    assert torch.allclose(x, target.expand_as(x), atol=1e-12)
    assert not torch.allclose(x.clamp(-1, 1), target.expand_as(x))  # the guide's clamp
    tiny = FLOWER_PRESETS["tiny"]
    assert FlowerPolicy(tiny, obs_dim=2).clip_actions is False  # default: no clamp


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
