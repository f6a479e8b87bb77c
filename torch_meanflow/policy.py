"""FLOWER policy trained with the MeanFlow objective: `FlowerPolicy`.

The policy is FLOWER's flow transformer (`torch_meanflow.flower.FlowerTransformer`, with
the interval h in the "adaln" or "decoder" placement) behind an observation encoder. The
Florence-2 VLM that produces FLOWER's tokens is outside this project: any module with
`forward(obs) -> FlowerCond` can stand in (`ObservationEncoder`), and `LowDimEncoder` is a
built-in one for low-dimensional observation vectors.

Training uses `torch_meanflow.objective.meanflow_loss` with guidance off and no class
dropout (the conditioning is continuous tokens, there is no null class). Sampling follows
the MeanFlow solver: one step by default, x = e - u(e, t=1, h=1); n steps with h = 1/n.

Clamping sampled actions (the seed guide's `z.clamp(-1, 1)`) is
only correct when the action data was normalised to [-1, 1] (as FLOWER's datasets are);
on raw actions it silently truncates valid outputs. It is therefore an explicit flag,
`clip_actions`, False by default: set it True only for data normalised to [-1, 1].
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from meanflow_common.config import FlowerConfig, MeanFlowConfig, override
from torch_meanflow.flower import FlowerCond, FlowerTransformer
from torch_meanflow.objective import MeanFlowNoise, MeanFlowOutput, meanflow_loss, sample_noise, sample_tr
from torch_meanflow.solver import generate

__all__ = ["ObservationEncoder", "LowDimEncoder", "FlowerPolicy", "make_u_fn"]


@runtime_checkable
class ObservationEncoder(Protocol):
    """Anything mapping an observation batch to the transformer's conditioning."""

    def forward(self, obs: Any) -> FlowerCond:  # pragma: no cover - protocol
        ...


class LowDimEncoder(nn.Module):
    """Low-dimensional observations [B, obs_dim] -> FlowerCond.

    tokens: MLP obs -> [B, num_tokens, cond_dim] (Linear, GELU, Linear). frequency_embeds:
    `embed_frequency(full([B], frequency))` with the transformer's own frequency embedder
    (FLOWER feeds control frequency 3 on CALVIN); it is held as a callable, not a
    submodule, so its parameters stay owned by the transformer.
    """

    def __init__(self, obs_dim: int, config: FlowerConfig, embed_frequency: Callable[[torch.Tensor], torch.Tensor],
                 num_tokens: int = 4, hidden_dim: int = 0, frequency: float = 3.0):
        super().__init__()
        if obs_dim < 1 or num_tokens < 1:
            raise ValueError(f"obs_dim and num_tokens must be >= 1, got {obs_dim}, {num_tokens}")
        self.obs_dim, self.num_tokens, self.cond_dim = obs_dim, num_tokens, config.cond_dim
        self.frequency = float(frequency)
        self.embed_frequency = embed_frequency
        hidden = hidden_dim or 2 * config.cond_dim
        self.mlp = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * config.cond_dim)
        )

    def forward(self, obs: torch.Tensor) -> FlowerCond:
        if not torch.is_tensor(obs) or obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            shape = tuple(obs.shape) if torch.is_tensor(obs) else type(obs).__name__
            raise ValueError(f"LowDimEncoder expects observations [B, obs_dim={self.obs_dim}], got {shape}")
        tokens = self.mlp(obs).reshape(obs.shape[0], self.num_tokens, self.cond_dim)
        freq = torch.full((obs.shape[0],), self.frequency, dtype=obs.dtype, device=obs.device)
        return FlowerCond(tokens=tokens, frequency_embeds=self.embed_frequency(freq))


class FlowerPolicy(nn.Module):
    """MeanFlow action policy: actions [B, T, A] given observations.

    config: the transformer (`FlowerConfig`, h_placement "adaln" or "decoder").
    encoder: an `ObservationEncoder`; without one, `obs_dim` builds a `LowDimEncoder`.
    mf_cfg: objective settings; guidance_eq and class_dropout_prob are forced to "" and 0.
    clip_actions: clamp samples to [-1, 1]; only for action data normalised to that range.
    """

    def __init__(self, config: FlowerConfig, encoder: Optional[nn.Module] = None, obs_dim: Optional[int] = None,
                 mf_cfg: Optional[MeanFlowConfig] = None, clip_actions: bool = False, num_tokens: int = 4):
        super().__init__()
        self.config = config
        self.model = FlowerTransformer(config)
        if encoder is None:
            if obs_dim is None:
                raise ValueError("give an encoder, or obs_dim to build the built-in LowDimEncoder")
            encoder = LowDimEncoder(obs_dim, config, self.model.embed_frequency, num_tokens=num_tokens)
        if not isinstance(encoder, ObservationEncoder):
            raise TypeError(f"encoder must have forward(obs) -> FlowerCond, got {type(encoder).__name__}")
        self.encoder = encoder
        self.mf_cfg = override(mf_cfg or MeanFlowConfig(), {"guidance_eq": "", "class_dropout_prob": 0.0})
        self.clip_actions = bool(clip_actions)

    # -- helpers -----------------------------------------------------------------------

    @property
    def _dtype_device(self):
        w = self.model.cond_linear.weight
        return w.dtype, w.device

    def u_fn(self, z, t, h, cond: FlowerCond, train: bool = False) -> torch.Tensor:
        """The network as the objective sees it: z [B, T, A], t [B], h [B] -> u [B, T, A]."""
        return self.model(z, t, h, cond, train=train)

    def encode(self, obs) -> FlowerCond:
        cond = self.encoder(obs)
        if not isinstance(cond, FlowerCond):
            raise TypeError(f"the encoder returned {type(cond).__name__}, expected FlowerCond")
        return cond

    def _check_actions(self, actions: torch.Tensor, batch: int) -> None:
        cfg = self.config
        expect = (batch, cfg.act_window_size, cfg.action_dim)
        if not torch.is_tensor(actions) or actions.dim() != 3:
            shape = tuple(actions.shape) if torch.is_tensor(actions) else type(actions).__name__
            raise ValueError(f"actions must be [B, T, A] = {expect}, got {shape}")
        if actions.shape[2] != cfg.action_dim:
            raise ValueError(f"action dimension {actions.shape[2]} != config.action_dim {cfg.action_dim}")
        if tuple(actions.shape) != expect:
            raise ValueError(f"actions must be [B, T, A] = {expect} (batch of the observations), "
                             f"got {tuple(actions.shape)}")
        dtype, _ = self._dtype_device
        if actions.dtype != dtype:
            raise TypeError(f"actions have dtype {actions.dtype}, the policy's parameters are {dtype}")

    # -- objective ---------------------------------------------------------------------

    def sample_tr(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """(t, r), each [batch_size], by the objective's sampler with this policy's settings."""
        dtype, device = self._dtype_device
        return sample_tr(batch_size, self.mf_cfg, generator=generator, device=device, dtype=dtype)

    def meanflow_loss(self, obs, actions: torch.Tensor, noise: Optional[MeanFlowNoise] = None,
                      generator: Optional[torch.Generator] = None) -> MeanFlowOutput:
        """MeanFlow loss of the action chunk [B, T, A] given obs (dropout on, train=True)."""
        cond = self.encode(obs)
        self._check_actions(actions, cond.tokens.shape[0])
        if noise is None:
            noise = sample_noise(actions.shape, self.mf_cfg, generator=generator,
                                 device=actions.device, dtype=actions.dtype)
        return meanflow_loss(self.u_fn, actions, cond, noise, self.mf_cfg, null_y=None, train=True)

    def training_step(self, batch: dict, noise: Optional[MeanFlowNoise] = None,
                      generator: Optional[torch.Generator] = None) -> dict:
        """batch {"obs", "actions"} -> {"loss": scalar with gradient, "v_loss", "h_mean": detached}."""
        missing = {"obs", "actions"} - set(batch)
        if missing:
            raise KeyError(f"batch lacks {sorted(missing)}; it needs 'obs' and 'actions'")
        actions = batch["actions"]
        if noise is None and torch.is_tensor(actions):
            noise = sample_noise(actions.shape, self.mf_cfg, generator=generator,
                                 device=actions.device, dtype=actions.dtype)
        out = self.meanflow_loss(batch["obs"], actions, noise=noise)
        h_mean = (noise.t - noise.r).mean()
        return {"loss": out.loss, "v_loss": out.v_loss.detach().mean(), "h_mean": h_mean.detach()}

    # -- sampling ----------------------------------------------------------------------

    def sample_actions(self, obs, num_steps: int = 1, generator: Optional[torch.Generator] = None,
                       noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Action chunks [B, T, A] from noise in `num_steps` MeanFlow steps (eval mode, no grad).

        noise: optional e [B, T, A]; otherwise drawn from `generator`.
        """
        with torch.no_grad():
            cond = self.encode(obs)
            b = cond.tokens.shape[0]
            dtype, device = self._dtype_device
            if noise is None:
                shape = (b, self.config.act_window_size, self.config.action_dim)
                noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            self._check_actions(noise, b)
            x = generate(self.u_fn, noise, cond, num_steps=num_steps)
        return x.clamp(-1.0, 1.0) if self.clip_actions else x


def make_u_fn(policy: FlowerPolicy):
    """u_fn(z, t, h, obs, train) -> u of the whole policy (encoder and transformer): the
    observations [B, obs_dim] are the conditioning, as `jax_meanflow.policy.make_u_fn`."""

    def u_fn(z, t, h, obs, train=False):
        return policy.u_fn(z, t, h, policy.encode(obs), train=train)

    return u_fn
