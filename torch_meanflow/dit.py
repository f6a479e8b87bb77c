"""The DiT image network of the official JAX MeanFlow code, PyTorch, NCHW.

Twin of `jax_meanflow.dit`. State-dict names follow facebookresearch/DiT:

    x_embedder.proj.{weight,bias}                      conv, weight OIHW [D, C, p, p]
    t_embedder.mlp.{0,2}.{weight,bias}                 (same for h_embedder)
    y_embedder.embedding_table.weight                  [num_classes + 1, D]
    blocks.{i}.attn.{qkv,proj}.*, blocks.{i}.mlp.{fc1,fc2}.*, blocks.{i}.adaLN_modulation.1.*
    final_layer.linear.*, final_layer.adaLN_modulation.1.*

The fixed position embedding is a non-persistent buffer (not in the state dict).
The network has no dropout: class dropout lives in the objective; label num_classes is
the null class. Attention goes through `torch_meanflow.attention.attention`, which stays
differentiable under `torch.func.jvp`.
"""
from __future__ import annotations

import torch
from torch import nn

from meanflow_common.config import DiTConfig
from meanflow_common.tables import sincos_2d_pos_embed
from torch_meanflow.attention import attention
from torch_meanflow.layers import FixedTables, LayerNorm, Mlp, TimestepEmbedder, modulate

__all__ = ["DiT", "init_dit", "make_u_fn"]


class PatchEmbed(nn.Module):
    """[B, C, H, W] -> [B, (H/p) * (W/p), D] by a conv with kernel = stride = p."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)  # last row: null class

    def forward(self, labels):
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (timm layout: qkv reshaped to [B, N, 3, H, d])."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = attention(q, k, v)  # [B, H, N, d_head]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x [B, N, D], c [B, D] -> [B, N, D]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        d = hidden_size
        self.norm1 = LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, num_heads)
        self.norm2 = LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """x [B, N, D], c [B, D] -> [B, N, p * p * C]."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = LayerNorm(hidden_size, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(FixedTables):
    """MeanFlow DiT: u(x [B, C, H, W], t [B], h [B], y [B] int) -> [B, C, H, W]."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, d)
        self.t_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.h_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d)
        self.set_table("pos_embed", sincos_2d_pos_embed(d, cfg.input_size // cfg.patch_size)[None])  # [1, N, D]
        self.blocks = nn.ModuleList([DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.in_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """The reference initialisation (the single place where it is defined).

        xavier-uniform linears (conv as a [D, C*p*p] matrix) with zero biases; normal(0.02)
        label table and time-embedder weights; zeros for every adaLN output and the final linear.
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        self.t_embedder.reset_parameters(0.02)
        self.h_embedder.reset_parameters(0.02)
        for layer in [blk.adaLN_modulation[-1] for blk in self.blocks] + [
            self.final_layer.adaLN_modulation[-1],
            self.final_layer.linear,
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x):
        """[B, N, p * p * C] -> [B, C, H, W]."""
        cfg = self.config
        p, c, g = cfg.patch_size, cfg.in_channels, cfg.input_size // cfg.patch_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def _check_inputs(self, x, t, h, y):
        cfg, c = self.config, self.config.in_channels
        if x.ndim != 4:
            raise ValueError(f"DiT expects x of shape [B, C, H, W] (NCHW), got shape {tuple(x.shape)}")
        if x.shape[1] != c:
            if x.shape[-1] == c:
                raise ValueError(
                    f"x has shape {tuple(x.shape)}: channels on the last axis look like NHWC, but the torch "
                    f"DiT takes NCHW [B, {c}, {cfg.input_size}, {cfg.input_size}]; use x.permute(0, 3, 1, 2)"
                )
            raise ValueError(f"x has {x.shape[1]} channels on axis 1 (NCHW), expected in_channels={c}")
        if tuple(x.shape[2:]) != (cfg.input_size, cfg.input_size):
            raise ValueError(f"x spatial size {tuple(x.shape[2:])} != input_size {cfg.input_size}")
        wdt = self.x_embedder.proj.weight.dtype
        if x.dtype != wdt:
            raise TypeError(f"x has dtype {x.dtype} but the DiT parameters are {wdt}; cast one of them")
        b = x.shape[0]
        for name, v in (("t", t), ("h", h), ("y", y)):
            if tuple(v.shape) != (b,):
                raise ValueError(f"{name} must have shape [B] = ({b},), got {tuple(v.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
        # Value checks need the labels' data: skipped in traced code (torch.compile, and
        # torch.func transforms, whose wrapped tensors hide it), as in the objective.
        if not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(y):
            bad = y[(y < 0) | (y > cfg.num_classes)]
            if bad.numel():
                raise ValueError(
                    f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null class), got {bad.tolist()}"
                )

    def forward(self, x, t, h, y, train: bool = False):
        """`train` is accepted for the u_fn interface; the network has no dropout."""
        self._check_inputs(x, t, h, y)
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.h_embedder(h) + self.y_embedder(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))


def init_dit(config: DiTConfig, seed: int = 0, dtype: torch.dtype = torch.float32, device=None) -> DiT:
    """A DiT with the reference initialisation drawn from `seed` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DiT(config)
    return model.to(device=device, dtype=dtype)


def make_u_fn(model: DiT):
    """u_fn(z [B, C, H, W], t [B], h [B], y [B], train=False) -> u [B, C, H, W]."""

    def u_fn(z, t, h, y, train=False):
        return model(z, t, h, y, train=train)

    return u_fn
