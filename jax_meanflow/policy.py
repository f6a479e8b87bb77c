"""FLOWER policy trained with the MeanFlow objective, JAX twin of `torch_meanflow.policy`.

`FlowerPolicy` is FLOWER's flow transformer (`jax_meanflow.flower.FlowerTransformer`)
behind an observation encoder; `LowDimEncoder` is the built-in encoder for
low-dimensional observation vectors. The parameter tree mirrors the torch module's
state dict (table "policy" in parity/convert/tables/policy.py):

    model/<FlowerTransformer tree>     <->  model.<FLOWER names>
    encoder/mlp_0/{kernel,bias}        <->  encoder.mlp.0.{weight,bias}
    encoder/mlp_2/{kernel,bias}        <->  encoder.mlp.2.{weight,bias}

Flax modules are pure, so the torch methods that use the module's own weights take the
parameter tree first here: `meanflow_loss(params, obs, actions, noise, dropout_rng)`,
`sample_actions(params, obs, num_steps, key, noise)`. Training uses guidance off and no
class dropout (the conditioning is continuous tokens). Sampled actions are clamped to
[-1, 1] only with `clip_actions=True`, for action data normalised to that range (SPEC
section 4, error 4).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jax_meanflow.flower import FlowerCond, FlowerTransformer, init_flower
from jax_meanflow.flower import make_u_fn as flower_u_fn
from jax_meanflow.flower_layers import torch_dense
from jax_meanflow.objective import MeanFlowNoise, MeanFlowOutput, meanflow_loss, sample_noise, sample_tr
from jax_meanflow.solver import generate
from meanflow_common.config import FlowerConfig, MeanFlowConfig, override

__all__ = ["LowDimEncoder", "PolicyNet", "FlowerPolicy", "make_u_fn"]


class LowDimEncoder(nn.Module):
    """Low-dimensional observations [B, obs_dim] -> FlowerCond.

    tokens: MLP obs -> [B, num_tokens, cond_dim] (Dense, GELU (erf), Dense, initialised as
    torch's nn.Linear); frequency_embeds: `embed_frequency(full([B], frequency))`, the
    transformer's own frequency embedder, passed in at call time so its parameters stay
    owned by the transformer.
    """

    obs_dim: int
    config: FlowerConfig
    num_tokens: int = 4
    hidden_dim: int = 0
    frequency: float = 3.0

    @nn.compact
    def __call__(self, obs, embed_frequency) -> FlowerCond:
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"LowDimEncoder expects observations [B, obs_dim={self.obs_dim}], got {tuple(obs.shape)}")
        cond_dim = self.config.cond_dim
        hidden = self.hidden_dim or 2 * cond_dim
        x = torch_dense(hidden, self.obs_dim, name="mlp_0")(obs)
        x = torch_dense(self.num_tokens * cond_dim, hidden, name="mlp_2")(jax.nn.gelu(x, approximate=False))
        freq = jnp.full((obs.shape[0],), self.frequency, obs.dtype)
        return FlowerCond(tokens=x.reshape(obs.shape[0], self.num_tokens, cond_dim),
                          frequency_embeds=embed_frequency(freq))


class PolicyNet(nn.Module):
    """The policy's parameters in one tree: `model` (the transformer) and `encoder`."""

    config: FlowerConfig
    obs_dim: int
    num_tokens: int = 4

    def setup(self):
        self.model = FlowerTransformer(self.config)
        self.encoder = LowDimEncoder(self.obs_dim, self.config, num_tokens=self.num_tokens)

    def encode(self, obs) -> FlowerCond:
        return self.encoder(obs, self.model.embed_frequency)

    def __call__(self, z, t, h, cond: FlowerCond, train: bool = False):
        return self.model(z, t, h, cond, train=train)

    def u(self, z, t, h, obs, train: bool = False):
        """The network from the observations: z [B, T, A], t [B], h [B], obs [B, obs_dim] -> u."""
        return self.model(z, t, h, self.encode(obs), train=train)


def make_u_fn(net: PolicyNet, params, dropout_rng=None):
    """u_fn(z, t, h, obs, train) -> u of the whole policy (encoder and transformer) with its
    tree {"model", "encoder"}: the observations [B, obs_dim] are the conditioning. With
    train=True and non-zero dropout rates, `dropout_rng` is required."""
    cfg = net.config
    has_dropout = max(cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop,
                      cfg.proprio_pdrop if cfg.use_proprio else 0.0) > 0.0

    def u_fn(z, t, h, obs, train=False):
        if train and has_dropout and dropout_rng is None:
            raise ValueError("train=True with dropout needs make_u_fn(..., dropout_rng=key)")
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        return net.apply({"params": params}, z, t, h, obs, train=train, rngs=rngs, method="u")

    return u_fn


class FlowerPolicy:
    """MeanFlow action policy: actions [B, T, A] given observations [B, obs_dim].

    config: the transformer (`FlowerConfig`); mf_cfg: objective settings, with
    guidance_eq and class_dropout_prob forced to "" and 0; clip_actions: clamp samples
    to [-1, 1] (only for action data normalised to that range).
    """

    def __init__(self, config: FlowerConfig, obs_dim: int, mf_cfg: Optional[MeanFlowConfig] = None,
                 clip_actions: bool = False, num_tokens: int = 4):
        if obs_dim < 1 or num_tokens < 1:
            raise ValueError(f"obs_dim and num_tokens must be >= 1, got {obs_dim}, {num_tokens}")
        self.config, self.obs_dim, self.num_tokens = config, int(obs_dim), int(num_tokens)
        self.net = PolicyNet(config, self.obs_dim, self.num_tokens)
        self.transformer = FlowerTransformer(config)
        self.mf_cfg = override(mf_cfg or MeanFlowConfig(), {"guidance_eq": "", "class_dropout_prob": 0.0})
        self.clip_actions = bool(clip_actions)

    def init(self, seed: int = 0, dtype=jnp.float32) -> dict:
        """{"model": init_flower(config, seed), "encoder": ...}; the encoder's Linear layers
        drawn like torch's nn.Linear (uniform +-1/sqrt(fan_in)) from a NumPy generator."""
        rng = np.random.default_rng([seed, 1])
        hidden = 2 * self.config.cond_dim
        encoder = {}
        for name, (fan_in, fan_out) in (("mlp_0", (self.obs_dim, hidden)),
                                        ("mlp_2", (hidden, self.num_tokens * self.config.cond_dim))):
            bound = 1.0 / np.sqrt(fan_in)
            encoder[name] = {
                "kernel": jnp.asarray(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)),
                "bias": jnp.asarray(rng.uniform(-bound, bound, (fan_out,)).astype(dtype)),
            }
        return {"model": init_flower(self.config, seed, dtype), "encoder": encoder}

    # -- helpers -----------------------------------------------------------------------

    def encode(self, params, obs) -> FlowerCond:
        return self.net.apply({"params": params}, obs, method="encode")

    def u_fn(self, params, dropout_rng=None):
        """u_fn(z [B, T, A], t [B], h [B], cond: FlowerCond, train) -> u [B, T, A]."""
        return flower_u_fn(self.transformer, params["model"], dropout_rng=dropout_rng)

    def _check_actions(self, actions, batch: int, dtype) -> None:
        cfg = self.config
        expect = (batch, cfg.act_window_size, cfg.action_dim)
        if actions.ndim != 3 or tuple(actions.shape) != expect:
            raise ValueError(f"actions must be [B, T, A] = {expect} (batch of the observations), "
                             f"got {tuple(actions.shape)}")
        if actions.dtype != dtype:
            raise TypeError(f"actions have dtype {actions.dtype}, the observations {dtype}")

    # -- objective ---------------------------------------------------------------------

    def sample_tr(self, key, batch_size: int, dtype=jnp.float32):
        """(t, r), each [batch_size], by the objective's sampler with this policy's settings."""
        return sample_tr(key, batch_size, self.mf_cfg, dtype)

    def meanflow_loss(self, params, obs, actions, noise: Optional[MeanFlowNoise] = None, key=None,
                      dropout_rng=None) -> MeanFlowOutput:
        """MeanFlow loss of the action chunk [B, T, A] given obs [B, obs_dim] (train=True).

        noise: explicit randomness, or drawn from `key`; dropout_rng: needed when the
        transformer has dropout.
        """
        obs, actions = jnp.asarray(obs), jnp.asarray(actions)
        cond = self.encode(params, obs)
        self._check_actions(actions, obs.shape[0], obs.dtype)
        if noise is None:
            if key is None:
                raise ValueError("give noise or a key to draw it")
            noise = sample_noise(key, actions.shape, self.mf_cfg, actions.dtype)
        return meanflow_loss(self.u_fn(params, dropout_rng), actions, cond, noise, self.mf_cfg, null_y=None, train=True)

    def training_step(self, params, batch: dict, noise: Optional[MeanFlowNoise] = None, key=None,
                      dropout_rng=None) -> dict:
        """batch {"obs", "actions"} -> {"loss": scalar, "v_loss", "h_mean"} (differentiable in params)."""
        missing = {"obs", "actions"} - set(batch)
        if missing:
            raise KeyError(f"batch lacks {sorted(missing)}; it needs 'obs' and 'actions'")
        actions = jnp.asarray(batch["actions"])
        if noise is None:
            if key is None:
                raise ValueError("give noise or a key to draw it")
            noise = sample_noise(key, actions.shape, self.mf_cfg, actions.dtype)
        out = self.meanflow_loss(params, batch["obs"], actions, noise=noise, dropout_rng=dropout_rng)
        h_mean = jax.lax.stop_gradient(jnp.mean(noise.t - noise.r))
        return {"loss": out.loss, "v_loss": jax.lax.stop_gradient(jnp.mean(out.v_loss)), "h_mean": h_mean}

    # -- sampling ----------------------------------------------------------------------

    def sample_actions(self, params, obs, num_steps: int = 1, key=None, noise=None):
        """Action chunks [B, T, A] from noise in `num_steps` MeanFlow steps (train=False).

        noise: optional e [B, T, A]; otherwise drawn from `key`.
        """
        obs = jnp.asarray(obs)
        cond = self.encode(params, obs)
        b = obs.shape[0]
        if noise is None:
            if key is None:
                raise ValueError("give noise or a key to draw it")
            noise = jax.random.normal(key, (b, self.config.act_window_size, self.config.action_dim), obs.dtype)
        noise = jnp.asarray(noise)
        self._check_actions(noise, b, obs.dtype)
        x = generate(self.u_fn(params), noise, cond, num_steps=num_steps)
        return jnp.clip(x, -1.0, 1.0) if self.clip_actions else x
