"""AdamW + EMA training state in PyTorch: optimiser settings, warm-up, EMA formula, clip,
decreasing loss on a tiny problem, and the compiled JVP tangent against eager."""
import copy
import time
import warnings

import pytest
import torch

from meanflow_common.config import MeanFlowConfig, OptimConfig
from torch_meanflow.objective import meanflow_loss, sample_noise
from torch_meanflow.train_state import (
    create_train_state,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
    train_step,
)

# norm_p 0: the plain sum of squares (with norm_p 1 the weighted loss sits near 1 until
# L_i approaches norm_eps, so it is a poor progress signal over a few steps).
CFG = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5, norm_p=0.0)


class Net(torch.nn.Module):
    """u(z, t, h) for 2-D data; default (random, non-zero) init everywhere."""

    def __init__(self, hidden=32):
        super().__init__()
        self.l1 = torch.nn.Linear(4, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, 2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, z, t, h):
        x = torch.cat([z, t[:, None], h[:, None]], dim=1)
        return self.l3(torch.nn.functional.silu(self.l2(torch.tanh(self.l1(x)))))


def loss_fn(model, batch, noise):
    return meanflow_loss(lambda z, t, h, y, train: model(z, t, h), batch, None, noise, CFG)


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 1.0]])
    return centers[torch.arange(n) % 2] + 0.1 * torch.randn(n, 2, generator=g)


def test_make_optimizer_settings_and_warmup():
    p = torch.nn.Parameter(torch.zeros(3))
    cfg = OptimConfig(lr=2e-3, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1, warmup_steps=4)
    opt, sched = make_optimizer([p], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    g = opt.param_groups[0]
    assert g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 and g["weight_decay"] == 0.1
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3])
    assert [make_lr_schedule(cfg)(s) for s in range(6)] == pytest.approx(lrs)
    opt, _ = make_optimizer([p], OptimConfig(lr=3e-4))
    assert opt.param_groups[0]["lr"] == 3e-4


def test_two_steps_are_adamw_by_hand():
    """train_step's updates, in float64, against AdamW written out: bias-corrected moments,
    decoupled weight decay, the loss's gradient at the current weights; the metrics too."""
    torch.manual_seed(0)
    model = Net().double()
    ocfg = OptimConfig(lr=1e-2, weight_decay=0.1, ema_decay=0.9)
    state = create_train_state(model, ocfg)
    x = _data(8).double()
    noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b1, b2, eps, lr, wd = ocfg.b1, ocfg.b2, ocfg.eps, ocfg.lr, ocfg.weight_decay
    params = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for k in (1, 2):
        probe = copy.deepcopy(model)
        probe_out = loss_fn(probe, x, noise)
        probe_loss = probe_out.loss
        grads = torch.autograd.grad(probe_loss, list(probe.parameters()))
        metrics = train_step(state, loss_fn, x, noise, ocfg)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = m[i] / (1 - b1**k), v[i] / (1 - b2**k)
            params[i] = params[i] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        for want, p in zip(params, model.parameters()):
            assert torch.allclose(p.detach(), want, rtol=1e-12, atol=1e-14), k
        assert torch.allclose(metrics["weighted_loss"], probe_loss.detach(), rtol=1e-13)
        assert torch.allclose(metrics["loss"], probe_out.loss_per_sample.detach().mean(), rtol=1e-13)
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        assert torch.allclose(metrics["grad_norm"], norm, rtol=1e-12) and metrics["lr"] == lr
    assert state.step == 2


def test_train_step_decreases_loss():
    """Fixed batch and fixed noise: the steps minimise one (moving-target) objective."""
    torch.manual_seed(0)
    ocfg = OptimConfig(lr=1e-2, ema_decay=0.99)
    state = create_train_state(Net(), ocfg)
    x = _data()
    noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(30):
        m = train_step(state, loss_fn, x, noise, ocfg)
        losses.append(float(m["loss"]))
        assert set(m) == {"loss", "v_loss", "weighted_loss", "grad_norm", "lr"} and m["lr"] == 1e-2
    assert state.step == 30
    assert losses[-1] < losses[10] < losses[0] and losses[-1] < 0.75 * losses[0], losses


def test_ema_formula_and_buffers():
    torch.manual_seed(0)
    model = Net()
    ocfg = OptimConfig(lr=1e-2, ema_decay=0.9)
    state = create_train_state(model, ocfg)
    before = copy.deepcopy(model.state_dict())
    x = _data(8)
    model.calls.fill_(5.0)
    train_step(state, loss_fn, x, sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(0)), ocfg)
    for (name, e), p in zip(state.ema_model.named_parameters(), model.parameters()):
        assert not torch.equal(p.detach(), before[name])  # the step moved every parameter
        assert torch.allclose(e, 0.9 * before[name] + 0.1 * p.detach(), rtol=1e-6, atol=1e-7)
        assert not e.requires_grad
    assert state.ema_model.calls.item() == 5.0 and not state.ema_model.training


def _ema_after_steps(steps=3, decay=0.8):
    torch.manual_seed(0)
    model = Net().double()
    ocfg = OptimConfig(lr=5e-2, ema_decay=decay)
    state = create_train_state(model, ocfg)
    x = _data(8).double()
    expect = {n: p.detach().clone() for n, p in model.named_parameters()}
    for k in range(steps):
        noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        train_step(state, loss_fn, x, noise, ocfg)
        expect = {n: decay * expect[n] + (1 - decay) * p.detach() for n, p in model.named_parameters()}
    return state, expect


def test_ema_formula_over_several_steps():
    """ema_k = d ema_{k-1} + (1 - d) params_k, checked in float64 after 3 steps (one step
    from ema_0 = params_0 cannot tell the EMA from an average of the last two parameter sets)."""
    state, expect = _ema_after_steps()
    for n, e in state.ema_model.named_parameters():
        assert torch.allclose(e, expect[n], rtol=1e-13, atol=1e-15), n


def test_ema_formula_check_can_fail(monkeypatch):
    """A wrong EMA (d * previous params + (1 - d) * params) passes one step but not three."""
    import torch_meanflow.train_state as ts

    previous = {}

    def wrong(ema_model, model, decay):
        for (n, e), p in zip(ema_model.named_parameters(), model.parameters()):
            e.copy_(decay * previous.get(n, e) + (1 - decay) * p.detach())
            previous[n] = p.detach().clone()

    monkeypatch.setattr(ts, "_update_ema", wrong)
    state, expect = _ema_after_steps()
    assert any(not torch.allclose(e, expect[n], rtol=1e-6) for n, e in state.ema_model.named_parameters())


def test_grad_clip_and_reported_norm():
    torch.manual_seed(0)
    model = Net()
    x = _data(8)
    noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(model)
    loss_fn(ref, x, noise).loss.backward()
    full = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    ocfg = OptimConfig(grad_clip=1e-3)
    m = train_step(create_train_state(model, ocfg), loss_fn, x, noise, ocfg)
    assert torch.allclose(m["grad_norm"], full, rtol=1e-5) and full > 1e-2
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert torch.allclose(clipped, torch.tensor(1e-3), rtol=1e-5)


@pytest.mark.heavy
def test_compiled_tangent_matches_eager():
    """torch.compile over meanflow_loss (forward with torch.func.jvp, backward by AOTAutograd)
    must keep the tangent: du/dt, loss and gradients equal eager."""
    torch.manual_seed(0)
    model = Net(hidden=16)
    eager_model = copy.deepcopy(model)
    x = _data(8)
    noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(3))
    seen = []

    def recording_loss(m, batch, nz):
        out = loss_fn(m, batch, nz)
        seen.append(out.du_dt)
        return out

    ocfg = OptimConfig(lr=1e-3)
    start = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback to eager would fail here
        metrics = make_train_step(recording_loss, ocfg, compile=True)(create_train_state(model, ocfg), x, noise)
    print(f"compiled step: {time.time() - start:.1f} s")
    eager_state = create_train_state(eager_model, ocfg)
    ref = loss_fn(eager_model, x, noise)
    assert ref.du_dt.abs().max() > 1e-2  # a real tangent
    assert torch.allclose(seen[0], ref.du_dt, rtol=1e-5, atol=1e-6)
    e_metrics = train_step(eager_state, loss_fn, x, noise, ocfg)
    assert torch.allclose(metrics["loss"], e_metrics["loss"], rtol=1e-5)
    assert torch.allclose(metrics["grad_norm"], e_metrics["grad_norm"], rtol=1e-4)
    for a, b in zip(model.parameters(), eager_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_warning(monkeypatch):
    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("simulated compiler failure")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    torch.manual_seed(0)
    model = Net()
    x = _data(8)
    noise = sample_noise(x.shape, CFG, generator=torch.Generator().manual_seed(0))
    ocfg = OptimConfig()
    step = make_train_step(loss_fn, ocfg, compile=True)
    with pytest.warns(RuntimeWarning, match="simulated compiler failure"):
        m = step(create_train_state(model, ocfg), x, noise)
    assert torch.isfinite(m["loss"])
