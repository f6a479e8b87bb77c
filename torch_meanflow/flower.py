"""FLOWER's flow transformer with the MeanFlow interval h (PyTorch port of the Flax twin).

As `dit_forward` of flower/models/flower.py (intuitive-robots/flower_vla_calvin), one
action space (`config.action_space`), cross-attention on, adaLN conditioning from time
only (FLOWER's `use_adaln_cond=False`), Florence-2 left out: the conditioning tokens come in
through `FlowerCond`. Parameter names are FLOWER's (`dit.0.self_attn.qkv.weight`,
`action_encoders.eef_delta.fc1.weight`, `adaln.eef_delta.modCX.1.weight`, ...).

The interval h = t - r enters in one of two places (`config.h_placement`):
"adaln": global_cond gets stateless_norm(h_embedder(h)), like t;
"decoder": the action decoder is the seed guide's MeanFlowDecoder(features, h).

Dropout follows the `train` argument only (not `module.training`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from meanflow_common.checks import check_flower_inputs, check_same_dtype
from meanflow_common.config import FlowerConfig
from meanflow_common.tables import rope_cos_sin
from torch_meanflow.flower_layers import (
    FlowBlock,
    FreqEmbedder,
    MeanFlowDecoder,
    Mlp,
    RmsNorm,
    SharedAdaLNController,
    TimestepEmbedder,
    stateless_norm,
)
from torch_meanflow.layers import FixedTables

__all__ = ["FlowerCond", "FlowerTransformer", "init_flower", "make_u_fn"]


@dataclass
class FlowerCond:
    """Conditioning of the flow transformer.

    tokens: [B, S, cond_dim] VLM tokens (FLOWER's `features`, before cond_norm/cond_linear).
    frequency_embeds: [B, dit_dim] the control-frequency embedding, i.e. FLOWER's
        `frequency_embedder(frequency)` output (FLOWER feeds frequency 3 on CALVIN); build it
        with `FlowerTransformer.embed_frequency(frequency [B])`.
    proprio: None or [B, proprio_dim] (used only with `config.use_proprio`).
    """

    tokens: torch.Tensor
    frequency_embeds: torch.Tensor
    proprio: Optional[torch.Tensor] = None

    def to(self, device=None, dtype=None) -> "FlowerCond":
        def move(x):
            return None if x is None else x.to(device=device, dtype=dtype)

        return FlowerCond(move(self.tokens), move(self.frequency_embeds), move(self.proprio))


def _check_inputs(cfg: FlowerConfig, z, t, h, cond: FlowerCond, dtype: torch.dtype):
    proprio = None if cond.proprio is None else cond.proprio.shape
    check_flower_inputs(cfg, z.shape, t.shape, h.shape, cond.tokens.shape, cond.frequency_embeds.shape, proprio)
    named = [("z", z), ("t", t), ("h", h), ("cond.tokens", cond.tokens), ("cond.frequency_embeds", cond.frequency_embeds)]
    if cond.proprio is not None:
        named.append(("cond.proprio", cond.proprio))
    check_same_dtype([(n, x.dtype) for n, x in named], dtype, "the model's parameters are")


class FlowerTransformer(FixedTables):
    """u(z, t, h | cond): [B, T, A] -> [B, T, A]."""

    def __init__(self, config: FlowerConfig):
        super().__init__()
        self.config = cfg = config
        d, name = cfg.dit_dim, cfg.action_space
        fes = cfg.frequency_embedding_size
        self.action_encoders = nn.ModuleDict({name: Mlp(cfg.action_dim, d, d)})
        if cfg.h_placement == "decoder":
            decoder = MeanFlowDecoder(d, cfg.action_dim, cfg.decoder_hidden, fes, cfg.time_scale)
        else:
            decoder = nn.Linear(d, cfg.action_dim)
        self.action_decoders = nn.ModuleDict({name: decoder})
        if cfg.use_proprio:
            self.proprio_encoders = nn.ModuleDict({name: Mlp(cfg.proprio_dim, d, d, drop=cfg.proprio_pdrop)})
        self.adaln = nn.ModuleDict({name: SharedAdaLNController(d, d)})
        self.cond_linear = nn.Linear(cfg.cond_dim, d, bias=False)
        self.t_embedder = TimestepEmbedder(d, fes, cfg.time_scale)
        if cfg.h_placement == "adaln":
            self.h_embedder = TimestepEmbedder(d, fes, cfg.time_scale)
        self.cond_norm = RmsNorm(cfg.cond_dim, eps=1e-6)
        self.frequency_embedder = FreqEmbedder(d, fes)
        if cfg.position_mode == "learned":
            self.positional_encoding = nn.Parameter(torch.randn(1, cfg.act_window_size, d) * 0.1)
        else:  # RoPE over the action window (inputs are checked to be that long)
            cos, sin = rope_cos_sin(d // cfg.n_heads, cfg.act_window_size, cfg.rope_theta)
            self.set_table("rope_cos", cos)
            self.set_table("rope_sin", sin)
        self.dit = nn.ModuleList(
            FlowBlock(d, cfg.n_heads, cfg.attn_pdrop, cfg.resid_pdrop, cfg.mlp_pdrop, cfg.lora_dim)
            for _ in range(cfg.n_layers)
        )

    def embed_frequency(self, frequency: torch.Tensor) -> torch.Tensor:
        """Control frequency [B] -> FlowerCond.frequency_embeds [B, dit_dim]."""
        return self.frequency_embedder(frequency)

    def _rope(self, like: torch.Tensor):
        if self.config.position_mode != "rope":
            return None
        return self.rope_cos.to(like.dtype), self.rope_sin.to(like.dtype)  # [T, d/2] each

    def forward(self, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor, cond: FlowerCond,
                train: bool = False) -> torch.Tensor:
        """z [B, T, A], t [B], h [B] -> u [B, T, A]."""
        cfg = self.config
        _check_inputs(cfg, z, t, h, cond, self.cond_linear.weight.dtype)
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


def init_flower(config: FlowerConfig, seed: int = 0, dtype: torch.dtype = torch.float32,
                device=None) -> FlowerTransformer:
    """A freshly initialised FlowerTransformer (PyTorch default init, FLOWER's zero-init
    controller and randn * 0.1 positions), seeded without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FlowerTransformer(config)
    return model.to(device=device, dtype=dtype)


def make_u_fn(model: FlowerTransformer):
    """u_fn(z, t, h, y, train) -> u with y a FlowerCond, as the objective expects."""

    def u_fn(z, t, h, y, train=False):
        return model(z, t, h, y, train=train)

    return u_fn
