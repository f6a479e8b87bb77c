"""FLOWER's flow transformer with the MeanFlow interval h (Flax linen; the reference).

As `dit_forward` of flower/models/flower.py (intuitive-robots/flower_vla_calvin), one
action space (`config.action_space`), cross-attention on, adaLN conditioning from time
only (FLOWER's `use_adaln_cond=False`), Florence-2 left out: the conditioning tokens come in
through `FlowerCond`. Twin of `torch_meanflow.flower`; parameter paths mirror FLOWER's torch
names (`dit_0/self_attn/qkv/kernel` <-> `dit.0.self_attn.qkv.weight`,
`action_encoders_eef_delta/fc1` <-> `action_encoders.eef_delta.fc1`), see
parity/convert/tables/flower.py.

The interval h = t - r enters in one of two places (`config.h_placement`):
"adaln": global_cond gets stateless_norm(h_embedder(h)), like t;
"decoder": the action decoder is the seed guide's MeanFlowDecoder(features, h).
"""
from __future__ import annotations

import functools
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from jax_meanflow.flower_layers import (
    FlowBlock,
    FreqEmbedder,
    MeanFlowDecoder,
    Mlp,
    RmsNorm,
    SharedAdaLNController,
    TimestepEmbedder,
    stateless_norm,
    torch_dense,
)
from meanflow_common.checks import check_flower_inputs, check_same_dtype
from meanflow_common.config import FlowerConfig
from meanflow_common.tables import rope_cos_sin

__all__ = ["FlowerCond", "FlowerTransformer", "init_flower", "param_shapes", "make_u_fn"]


@struct.dataclass
class FlowerCond:
    """Conditioning of the flow transformer (a pytree).

    tokens: [B, S, cond_dim] VLM tokens (FLOWER's `features`, before cond_norm/cond_linear).
    frequency_embeds: [B, dit_dim] the control-frequency embedding, i.e. FLOWER's
        `frequency_embedder(frequency)` output (FLOWER feeds frequency 3 on CALVIN); build it
        with `model.apply(params, frequency [B], method="embed_frequency")`.
    proprio: None or [B, proprio_dim] (used only with `config.use_proprio`).
    """

    tokens: jax.Array
    frequency_embeds: jax.Array
    proprio: Optional[jax.Array] = None


def _check_inputs(cfg: FlowerConfig, z, t, h, cond: FlowerCond):
    proprio = None if cond.proprio is None else cond.proprio.shape
    check_flower_inputs(cfg, z.shape, t.shape, h.shape, cond.tokens.shape, cond.frequency_embeds.shape, proprio)
    named = [("t", t), ("h", h), ("cond.tokens", cond.tokens), ("cond.frequency_embeds", cond.frequency_embeds)]
    if cond.proprio is not None:
        named.append(("cond.proprio", cond.proprio))
    # JAX would silently promote mixed dtypes; the torch twin refuses them, so refuse here too.
    check_same_dtype([(n, x.dtype) for n, x in named], z.dtype, "z has")


class FlowerTransformer(nn.Module):
    """u(z, t, h | cond): [B, T, A] -> [B, T, A]. Dropout uses the 'dropout' rng when train."""

    config: FlowerConfig

    def setup(self):
        cfg = self.config
        d, name = cfg.dit_dim, cfg.action_space
        fes = cfg.frequency_embedding_size
        self.action_encoders = {name: Mlp(cfg.action_dim, d, d)}
        if cfg.h_placement == "decoder":
            self.action_decoders = {name: MeanFlowDecoder(d, cfg.action_dim, cfg.decoder_hidden, fes, cfg.time_scale)}
        else:
            self.action_decoders = {name: torch_dense(cfg.action_dim, d)}
        if cfg.use_proprio:
            self.proprio_encoders = {name: Mlp(cfg.proprio_dim, d, d, drop=cfg.proprio_pdrop)}
        self.adaln = {name: SharedAdaLNController(d)}
        self.cond_linear = torch_dense(d, cfg.cond_dim, use_bias=False)
        self.t_embedder = TimestepEmbedder(d, fes, time_scale=cfg.time_scale)
        if cfg.h_placement == "adaln":
            self.h_embedder = TimestepEmbedder(d, fes, time_scale=cfg.time_scale)
        self.cond_norm = RmsNorm(1e-6)
        self.frequency_embedder = FreqEmbedder(d, fes)
        if cfg.position_mode == "learned":
            self.positional_encoding = self.param(
                "positional_encoding", lambda k, s: 0.1 * jax.random.normal(k, s), (1, cfg.act_window_size, d)
            )
        self.dit = [
            FlowBlock(d, cfg.n_heads, cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop, cfg.lora_dim)
            for _ in range(cfg.n_layers)
        ]

    def embed_frequency(self, frequency):
        """Control frequency [B] -> FlowerCond.frequency_embeds [B, dit_dim]."""
        return self.frequency_embedder(frequency)

    def _rope(self, like):
        cfg = self.config
        if cfg.position_mode != "rope":
            return None
        cos, sin = rope_cos_sin(cfg.dit_dim // cfg.n_heads, like.shape[1], cfg.rope_theta)
        return jnp.asarray(cos, like.dtype), jnp.asarray(sin, like.dtype)

    def __call__(self, z, t, h, cond: FlowerCond, train: bool = False):
        """z [B, T, A], t [B], h [B] -> u [B, T, A]."""
        cfg = self.config
        _check_inputs(cfg, z, t, h, cond)
        name = cfg.action_space
        cx = self.action_encoders[name](z, train=train)
        if cfg.position_mode == "learned":
            cx = cx + self.positional_encoding
        global_cond = stateless_norm(self.t_embedder(t))
        if cfg.h_placement == "adaln":
            global_cond = global_cond + stateless_norm(self.h_embedder(h))
        global_cond = global_cond + stateless_norm(cond.frequency_embeds)
        if cfg.use_proprio and cond.proprio is not None:
            # FLOWER adds stateless_norm(0) = 0 when proprio is absent: skipping it is the same.
            global_cond = global_cond + stateless_norm(self.proprio_encoders[name](cond.proprio, train=train))
        context = self.cond_linear(self.cond_norm(cond.tokens))
        global_adaln = self.adaln[name](global_cond)
        rope = self._rope(cx)
        for block in self.dit:
            cx = block(cx, global_cond, context, global_adaln, rope=rope, train=train)
        if cfg.h_placement == "decoder":
            return self.action_decoders[name](cx, h)
        return self.action_decoders[name](cx)


def _example_inputs(cfg: FlowerConfig, dtype):
    z = jnp.zeros((1, cfg.act_window_size, cfg.action_dim), dtype)
    t = jnp.zeros((1,), dtype)
    proprio = jnp.zeros((1, cfg.proprio_dim), dtype) if cfg.use_proprio else None
    cond = FlowerCond(jnp.zeros((1, 1, cfg.cond_dim), dtype), jnp.zeros((1, cfg.dit_dim), dtype), proprio)
    return z, t, cond


def _torch_like_init(shapes, rng: np.random.Generator, dtype, path=()):
    """Fill a tree of shapes as FLOWER's torch modules initialise themselves."""
    out = {}
    for name, leaf in shapes.items():
        here = path + (name,)
        if isinstance(leaf, dict):
            out[name] = _torch_like_init(leaf, rng, dtype, here)
            continue
        shape = tuple(leaf.shape)
        if name == "kernel" and path[-1] == "modCX_1":
            value = np.zeros(shape)
        elif name in ("kernel", "bias"):  # nn.Linear: weight and bias ~ U(+-1/sqrt(fan_in))
            fan_in = shapes["kernel"].shape[0]
            value = rng.uniform(-1.0, 1.0, shape) / np.sqrt(fan_in)
        elif name == "scale":
            value = np.ones(shape)
        elif name == "positional_encoding":
            value = 0.1 * rng.standard_normal(shape)
        else:
            raise KeyError(f"no initialisation rule for parameter {'/'.join(here)!r}")
        out[name] = jnp.asarray(value.astype(dtype))
    return out


def init_flower(config: FlowerConfig, key_or_seed=0, dtype=jnp.float32) -> dict:
    """Fresh parameters {name: ...} (without the outer "params"), every leaf in `dtype`.

    Initialised like FLOWER's torch modules (nn.Linear default, zero-init controller,
    randn * 0.1 positions); `frequency_embedder` is included (used by `embed_frequency`).
    The module initialisers give the same distributions, but drawing ~100 threefry
    streams costs about a minute of XLA compilation on CPU, so the values come from a
    float64 NumPy generator seeded by `key_or_seed` (an int or a JAX key).
    """
    if isinstance(key_or_seed, int):
        seed = key_or_seed
    else:
        seed = [int(x) for x in np.asarray(jax.random.key_data(key_or_seed)).ravel()]
    return _torch_like_init(param_shapes(config, dtype), np.random.default_rng(seed), dtype)


def param_shapes(config: FlowerConfig, dtype=jnp.float32) -> dict:
    """The parameter tree of `config` as jax.ShapeDtypeStruct leaves (nothing computed)."""
    model = FlowerTransformer(config)
    z, t, cond = _example_inputs(config, dtype)

    def both(module, z, t, h, cond):
        return module(z, t, h, cond), module.embed_frequency(t)

    shapes = jax.eval_shape(lambda k: model.init({"params": k}, z, t, t, cond, method=both), jax.random.PRNGKey(0))
    return flax.core.unfreeze(shapes["params"])


@functools.lru_cache(maxsize=16)
def _jitted_apply(cls, config: FlowerConfig):
    # one compilation per config and input shapes, shared by every u_fn (params are an argument)
    return jax.jit(cls(config).apply, static_argnames="train")


def make_u_fn(model: FlowerTransformer, params, dropout_rng=None):
    """u_fn(z, t, h, y, train) -> u with y a FlowerCond, as the objective expects.

    The forward is jitted. With train=True and non-zero dropout rates, `dropout_rng` is
    required; jax.jvp through u_fn then uses one mask for primal and tangent.
    """
    cfg = model.config
    has_dropout = max(cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop,
                      cfg.proprio_pdrop if cfg.use_proprio else 0.0) > 0.0
    apply = _jitted_apply(type(model), cfg)

    def u_fn(z, t, h, y, train=False):
        if train and has_dropout and dropout_rng is None:
            raise ValueError("train=True with dropout needs make_u_fn(..., dropout_rng=key)")
        rngs = {"dropout": dropout_rng} if (train and dropout_rng is not None) else {}
        return apply({"params": params}, z, t, h, y, train=train, rngs=rngs)

    return u_fn
