"""The GroupNorm + FiLM example network in PyTorch (imports torch only), images NCHW; no
`train` keyword (the twin of flax_net.py)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from examples.groupnorm_film.config import GroupNormFilmConfig


def time_embedding(t: torch.Tensor, time_dim: int) -> torch.Tensor:
    """t [B] -> [B, time_dim]: cos and sin of t times frequencies 1, 2, 4, ..."""
    freqs = torch.as_tensor(2.0 ** np.arange(time_dim // 2, dtype=np.float64), device=t.device).to(t.dtype)
    args = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNormFilmNet(nn.Module):
    """forward(z [B, C, H, W], t [B], h [B], y long [B]) -> u [B, C, H, W]."""

    def __init__(self, cfg: GroupNormFilmConfig):
        super().__init__()
        self.config = cfg
        self.time_fc = nn.Linear(2 * cfg.time_dim, cfg.hidden)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, cfg.hidden)
        self.norm_in = nn.GroupNorm(1, cfg.channels, eps=1e-5)
        self.conv_in = nn.Conv2d(cfg.channels, cfg.hidden, 3, padding=1)
        self.norm = nn.GroupNorm(cfg.groups, cfg.hidden, eps=1e-5)
        self.film = nn.Linear(cfg.hidden, 2 * cfg.hidden)
        self.conv_out = nn.Conv2d(cfg.hidden, cfg.channels, 3, padding=1)

    def forward(self, z, t, h, y):
        cfg = self.config
        emb = torch.cat([time_embedding(t, cfg.time_dim), time_embedding(h, cfg.time_dim)], dim=-1)
        cond = self.time_fc(emb) + self.label_embed(y)
        x = self.norm(self.conv_in(self.norm_in(z)))
        scale, shift = self.film(F.silu(cond)).chunk(2, dim=-1)
        x = x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return self.conv_out(F.silu(x))


def make_u_fn(module: GroupNormFilmNet):
    """u_fn(z, t, h, y, train) -> u; the network has no dropout, so `train` is dropped."""
    def u_fn(z, t, h, y, train=False):
        return module(z, t, h, y)

    return u_fn
