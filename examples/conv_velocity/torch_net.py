"""The example velocity network in PyTorch (imports torch only); the twin of flax_net.py,
images NCHW. `BrokenResBlock` is the deliberately broken port used to show a failing check."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from examples.conv_velocity.config import ConvVelocityConfig, time_frequencies


def time_embedding(t: torch.Tensor, time_dim: int) -> torch.Tensor:
    """t [B] -> [B, time_dim]: cos and sin of t times the shared frequency table."""
    freqs = torch.as_tensor(time_frequencies(time_dim), device=t.device).to(t.dtype)
    args = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.modulation = nn.Linear(width, 2 * width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def modulate(self, h, scale, shift):
        return h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]

    def forward(self, x, cond):
        """x [B, width, S, S], cond [B, width] -> [B, width, S, S]."""
        h = self.conv1(F.silu(x))
        scale, shift = self.modulation(F.silu(cond)).chunk(2, dim=-1)
        h = self.conv2(F.silu(self.modulate(h, scale, shift)))
        return x + h


class BrokenResBlock(ResBlock):
    """A plausible porting bug: the modulation without its "1 +" (scale used as the gain)."""

    def modulate(self, h, scale, shift):
        return h * scale[:, :, None, None] + shift[:, :, None, None]


class ConvVelocityNet(nn.Module):
    """forward(z [B, C, S, S], t [B], h [B], y long [B], train=False) -> u [B, C, S, S].
    `broken_block`: the index of a block built as `BrokenResBlock` (None: a correct port)."""

    def __init__(self, cfg: ConvVelocityConfig, broken_block: int | None = None):
        super().__init__()
        self.config = cfg
        w = cfg.width
        self.time_fc1 = nn.Linear(2 * cfg.time_dim, w)
        self.time_fc2 = nn.Linear(w, w)
        self.label_embed = nn.Embedding(cfg.num_classes + 1, w)
        self.conv_in = nn.Conv2d(cfg.channels, w, 3, padding=1)
        self.blocks = nn.ModuleList(
            (BrokenResBlock if i == broken_block else ResBlock)(w) for i in range(cfg.depth))
        self.conv_out = nn.Conv2d(w, cfg.channels, 3, padding=1)

    def forward(self, z, t, h, y, train: bool = False):
        cfg = self.config
        if z.dim() != 4 or tuple(z.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"z must be NCHW [B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}], "
                             f"got {tuple(z.shape)}")
        emb = torch.cat([time_embedding(t, cfg.time_dim), time_embedding(h, cfg.time_dim)], dim=-1)
        cond = self.time_fc2(F.silu(self.time_fc1(emb))) + self.label_embed(y)
        x = self.conv_in(z)
        for block in self.blocks:
            x = block(x, cond)
        return self.conv_out(F.silu(x))


def make_u_fn(module: ConvVelocityNet):
    """u_fn(z, t, h, y, train) -> u, as the MeanFlow objective calls the network."""
    def u_fn(z, t, h, y, train=False):
        return module(z, t, h, y, train=train)

    return u_fn
