"""FlowerPolicy: sampling shapes and the 1-step identity, du/dt through FLOWER's network,
short training runs for both h placements, custom encoders, and input errors."""
import copy

import pytest
import torch

from meanflow_common.config import FLOWER_PRESETS, override
from torch_meanflow.flower import FlowerCond
from torch_meanflow.objective import MeanFlowNoise, meanflow_loss, sample_noise
from torch_meanflow.params import randomize_params
from torch_meanflow.policy import FlowerPolicy, ObservationEncoder

TINY = FLOWER_PRESETS["tiny"]  # A=3, T=4, cond_dim 24, dit_dim 32
OBS_DIM = 5


def _policy(placement="adaln", dtype=torch.float32, seed=0, scale=1.0, time_scale=1000.0, **kw):
    torch.manual_seed(seed)
    cfg = override(TINY, {"h_placement": placement, "time_scale": time_scale})
    policy = FlowerPolicy(cfg, obs_dim=OBS_DIM, **kw)
    return randomize_params(policy, seed=seed, scale=scale).to(dtype)


def _obs(b=3, dtype=torch.float32, seed=1):
    return torch.randn(b, OBS_DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_parameters_are_owned_once():
    policy = _policy()
    names = [n for n, _ in policy.named_parameters()]
    assert len(names) == len(set(names))
    assert any(n.startswith("model.frequency_embedder.") for n in names)
    assert not any(n.startswith("encoder.frequency") for n in names)
    ema = copy.deepcopy(policy)  # what create_train_state does: the copy uses its own model
    assert ema.encoder.embed_frequency.__self__ is ema.model


@pytest.mark.parametrize("num_steps", [1, 4])
def test_sample_shapes(num_steps):
    policy = _policy()
    x = policy.sample_actions(_obs(), num_steps=num_steps, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, TINY.act_window_size, TINY.action_dim) and not x.requires_grad


@pytest.mark.parametrize("placement", ["adaln", "decoder"])
def test_one_step_identity(placement):
    policy = _policy(placement, torch.float64)
    obs = _obs(dtype=torch.float64)
    e = torch.randn(3, TINY.act_window_size, TINY.action_dim, dtype=torch.float64)
    x = policy.sample_actions(obs, noise=e)
    ones = torch.ones(3, dtype=torch.float64)
    with torch.no_grad():
        u = policy.model(e, ones, ones, policy.encode(obs), train=False)
    assert torch.allclose(x, e - u, rtol=1e-14, atol=1e-14) and u.abs().max() > 1e-2
    x4 = policy.sample_actions(obs, num_steps=4, noise=e)
    assert not torch.allclose(x4, x)


@pytest.mark.parametrize("placement", ["adaln", "decoder"])
def test_du_dt_through_flower_matches_finite_differences(placement):
    """The JVP runs through FLOWER's attention (math kernel): float64, random weights,
    train=False so that dropout does not differ between the evaluations."""
    policy = _policy(placement, torch.float64, scale=0.5)
    obs = _obs(2, torch.float64)
    actions = torch.randn(2, TINY.act_window_size, TINY.action_dim, dtype=torch.float64)
    cfg = override(policy.mf_cfg, {"data_proportion": 0.0})
    noise = sample_noise(actions.shape, cfg, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    cond = policy.encode(obs)
    out = meanflow_loss(policy.u_fn, actions, cond, noise, cfg, train=False)
    t, r = noise.t, noise.r
    z = (1 - t[:, None, None]) * actions + t[:, None, None] * noise.e
    # FLOWER's x1000 time frequencies make the third derivative large: the O(eps^2) error of
    # central differences is ~5e-7 (relative) at eps 1e-6 and ~5e-9 at eps 1e-7.
    eps = 1e-7
    with torch.no_grad():
        def u(zz, tt):
            return policy.model(zz, tt, tt - r, cond, train=False)

        fd = (u(z + eps * out.v_g, t + eps) - u(z - eps * out.v_g, t - eps)) / (2 * eps)
    scale = out.du_dt.abs().max()
    assert (out.du_dt - fd).abs().max() < 1e-7 * scale and scale > 1e-2


@pytest.mark.parametrize("placement", ["adaln", "decoder"])
def test_training_decreases_loss(placement):
    """30 Adam steps on one fixed batch with fixed noise: the unweighted loss drops.

    With time_scale 1 (DiT's frequencies): with FLOWER's x1000 the MeanFlow target
    v - h du/dt is dominated by d/dt of the embedding and on this tiny problem the loss grows
    at every learning rate tried (1e-4 .. 3e-3, both placements); pure flow matching
    (data_proportion 1) trains at either scale.
    """
    policy = _policy(placement, scale=0.3, time_scale=1.0)
    obs = _obs(8, seed=2)
    actions = torch.tanh(torch.randn(8, TINY.act_window_size, TINY.action_dim, generator=torch.Generator().manual_seed(3)))
    noise = sample_noise(actions.shape, policy.mf_cfg, generator=torch.Generator().manual_seed(5))
    assert (noise.t > noise.r).sum() >= 2  # MeanFlow samples (h > 0) are in the batch
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = policy.meanflow_loss(obs, actions, noise=noise)
        out.loss.backward()
        opt.step()
        losses.append(out.loss_per_sample.detach().mean().item())
    assert losses[-1] < losses[10] < losses[0] and losses[-1] < 0.75 * losses[0], losses


def test_training_step_and_sample_tr():
    policy = _policy()
    obs, actions = _obs(4), torch.randn(4, TINY.act_window_size, TINY.action_dim)
    res = policy.training_step({"obs": obs, "actions": actions}, generator=torch.Generator().manual_seed(0))
    assert set(res) == {"loss", "v_loss", "h_mean"} and res["loss"].requires_grad and res["h_mean"] >= 0
    res["loss"].backward()
    assert policy.model.adaln["eef_delta"].modCX[1].weight.grad.abs().max() > 0
    t, r = policy.sample_tr(8, generator=torch.Generator().manual_seed(0))
    assert t.shape == (8,) and r.shape == (8,) and torch.all(t >= r)
    assert policy.mf_cfg.guidance_eq == "" and policy.mf_cfg.class_dropout_prob == 0.0
    with pytest.raises(KeyError, match="actions"):
        policy.training_step({"obs": obs})


class TokenEncoder(torch.nn.Module):
    """A stand-in for the VLM: obs = precomputed tokens [B, S, cond_dim] and frequency embeds."""

    def forward(self, obs):
        return FlowerCond(tokens=obs["tokens"], frequency_embeds=obs["freq"])


def test_custom_encoder_protocol():
    assert isinstance(TokenEncoder(), ObservationEncoder)
    torch.manual_seed(0)
    policy = randomize_params(FlowerPolicy(TINY, encoder=TokenEncoder()), seed=0)
    obs = {"tokens": torch.randn(2, 6, TINY.cond_dim), "freq": torch.randn(2, TINY.dit_dim)}
    assert policy.sample_actions(obs).shape == (2, TINY.act_window_size, TINY.action_dim)
    with pytest.raises(ValueError, match="token feature dim"):
        policy.sample_actions({"tokens": torch.randn(2, 6, TINY.cond_dim + 1), "freq": obs["freq"]})
    with pytest.raises(ValueError, match="frequency_embeds"):
        policy.sample_actions({"tokens": obs["tokens"], "freq": torch.randn(2, 7)})
    with pytest.raises(ValueError, match="give an encoder, or obs_dim"):
        FlowerPolicy(TINY)
    with pytest.raises(TypeError, match="forward"):
        FlowerPolicy(TINY, encoder=object())


def test_bad_inputs():
    policy = _policy()
    obs = _obs(3)
    good = torch.randn(3, TINY.act_window_size, TINY.action_dim)
    with pytest.raises(ValueError, match="action dimension 4 != config.action_dim 3"):
        policy.meanflow_loss(obs, torch.randn(3, TINY.act_window_size, 4))
    with pytest.raises(ValueError, match=r"actions must be \[B, T, A\]"):
        policy.meanflow_loss(obs, torch.randn(3, TINY.act_window_size + 1, TINY.action_dim))
    with pytest.raises(ValueError, match=r"actions must be \[B, T, A\]"):
        policy.meanflow_loss(obs, good[0])
    with pytest.raises(ValueError, match=r"LowDimEncoder expects observations \[B, obs_dim=5\]"):
        policy.meanflow_loss(torch.randn(3, OBS_DIM + 2), good)
    with pytest.raises(TypeError, match="dtype"):
        policy.meanflow_loss(obs, good.double())
    noise = sample_noise(good.shape, policy.mf_cfg, generator=torch.Generator().manual_seed(0))
    bad = MeanFlowNoise(noise.e, noise.t * 0.5, noise.t, noise.drop_mask)
    with pytest.raises(ValueError, match="t < r at indices"):
        policy.meanflow_loss(obs, good, noise=bad)


def test_clip_actions_flag():
    """Clamping is opt-in: only valid for actions normalised to [-1, 1]."""
    obs = _obs()
    e = 3 * torch.randn(3, TINY.act_window_size, TINY.action_dim, generator=torch.Generator().manual_seed(0))
    raw = _policy().sample_actions(obs, noise=e)
    clipped = _policy(clip_actions=True).sample_actions(obs, noise=e)
    assert raw.abs().max() > 1.0
    assert torch.equal(clipped, raw.clamp(-1, 1))
