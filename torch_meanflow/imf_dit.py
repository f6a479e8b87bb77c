"""The improved MeanFlow network (official `imfDiT`), PyTorch, NCHW.

Twin of `jax_meanflow.imf_dit`. `IMFDiT(config)(z, t, h, omega, t_min, t_max, y) -> (u, v)`,
z, u, v [B, C, H, W]; t (unused, as official), h, omega, t_min, t_max [B]; y [B] long.
State-dict keys are the official torch branch's `imfDiT` keys (the published .pth files
hold them under "net."; `load_official_state_dict` strips it):
    x_embedder.proj.{weight,bias}
    {h,omega,cfg_t_start,cfg_t_end}_embedder.mlp.{0,2}._flax_linear.{weight,bias}
    y_embedder.embedding_table._flax_embedding.weight             [num_classes + 1, D]
    {class,omega,t_min,t_max,time}_tokens
    {shared_blocks,u_heads,v_heads}.{i}.{norm1,norm2}.weight, .attn_scale, .mlp_scale,
        .attn.{q,k,v,out}_proj._flax_linear.weight, .attn.{q,k}_norm.weight, .mlp.w{1,2,3}._flax_linear.weight
    {u,v}_final_layer.norm.weight, {u,v}_final_layer.linear._flax_linear.{weight,bias}
`config.eval=True`: the inference network (no v heads), which the published files fit.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from meanflow_common.imf_config import IMFDiTConfig
from meanflow_common.imf_tables import imf_rope_cos_sin
from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.tables import timestep_frequencies
from torch_meanflow.imf_layers import FinalLayer, Linear, TransformerBlock
from torch_meanflow.layers import FixedTables, timestep_embedding

__all__ = ["IMFDiT", "TimestepEmbedder", "check_inputs", "make_net_fn", "load_official_state_dict"]

_TOKENS = ("class_tokens", "omega_tokens", "t_min_tokens", "t_max_tokens", "time_tokens")


class TimestepEmbedder(FixedTables):
    """s [B] -> [B, D]: cos/sin features (float64 frequency table) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.set_table("freqs", timestep_frequencies(frequency_embedding_size))
        self.mlp = nn.Sequential(Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 Linear(hidden_size, hidden_size))

    def forward(self, s):
        # the features come out in the table's dtype; the MLP runs in the caller's (bfloat16 training)
        return self.mlp(timestep_embedding(s.to(self.freqs.dtype), self.freqs).to(s.dtype))


class PatchEmbedder(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Embedding(nn.Module):
    def __init__(self, n: int, d: int):
        super().__init__()
        self._flax_embedding = nn.Embedding(n, d)
        nn.init.normal_(self._flax_embedding.weight, std=1.0 / math.sqrt(d))

    def forward(self, ids):
        return self._flax_embedding(ids)


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = Embedding(num_classes + 1, hidden_size)  # last row: null class

    def forward(self, y):
        return self.embedding_table(y)


def check_inputs(cfg, z, t, h, omega, t_min, t_max, y, dtype=None):
    """Shapes, layout and dtypes, with messages naming the problem."""
    name = type(cfg).__name__
    c, s = cfg.in_channels, cfg.input_size
    if z.ndim != 4:
        raise ValueError(f"{name}: z must be [B, C, H, W] (NCHW), got shape {tuple(z.shape)}")
    if tuple(z.shape[1:]) != (c, s, s):
        hint = " (channels on the last axis look like NHWC; use z.permute(0, 3, 1, 2))" if z.shape[-1] == c else ""
        raise ValueError(f"{name}: z has shape {tuple(z.shape)}, expected [B, {c}, {s}, {s}] (NCHW){hint}")
    if dtype is not None and z.dtype != dtype:
        raise TypeError(f"{name}: z has dtype {z.dtype} but the parameters are {dtype}; cast one of them")
    b = z.shape[0]
    for k, v in (("t", t), ("h", h), ("omega", omega), ("t_min", t_min), ("t_max", t_max), ("y", y)):
        if tuple(v.shape) != (b,):
            raise ValueError(f"{name}: {k} must have shape [B] = ({b},), got {tuple(v.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: labels y must be integers, got {y.dtype}")
    if not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(y):
        bad = y[(y < 0) | (y > cfg.num_classes)]
        if bad.numel():
            raise ValueError(f"{name}: labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null), "
                             f"got {bad.tolist()}")


class IMFDiT(FixedTables):
    token_lead: tuple = ()  # official token shape: [n, D] (iMF) or [1, n, D] (pMF)

    def __init__(self, config: IMFDiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        self._embedders()
        for emb in ("h_embedder", "omega_embedder", "cfg_t_start_embedder", "cfg_t_end_embedder"):
            setattr(self, emb, TimestepEmbedder(d, cfg.frequency_embedding_size))
        counts = dict(class_tokens=cfg.num_class_tokens, omega_tokens=cfg.num_cfg_tokens,
                      t_min_tokens=cfg.num_interval_tokens, t_max_tokens=cfg.num_interval_tokens,
                      time_tokens=cfg.num_time_tokens)
        for tok in _TOKENS:
            setattr(self, tok, nn.Parameter(torch.randn(*self.token_lead, counts[tok], d) / math.sqrt(d)))
        self._set_rope()
        blk = dict(hidden_size=d, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio)
        self.shared_blocks = nn.ModuleList([TransformerBlock(**blk) for _ in range(cfg.shared_depth)])
        self.u_heads = nn.ModuleList([TransformerBlock(**blk) for _ in range(cfg.aux_head_depth)])
        self.v_heads = nn.ModuleList([TransformerBlock(**blk) for _ in range(0 if cfg.eval else cfg.aux_head_depth)])
        out = cfg.patch_size**2 * cfg.in_channels
        self.u_final_layer = FinalLayer(d, out)
        self._v_final(out)

    def _embedders(self):
        cfg = self.config
        self.x_embedder = PatchEmbedder(cfg.patch_size, cfg.in_channels, cfg.hidden_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size)

    def _set_rope(self):
        cfg = self.config
        cos, sin = imf_rope_cos_sin(cfg.head_dim, cfg.prefix_tokens + cfg.num_patches)
        self.set_table("rope_cos", cos)
        self.set_table("rope_sin", sin)

    def _v_final(self, out):
        self.v_final_layer = FinalLayer(self.config.hidden_size, out)

    def _sequence(self, z, h, omega, t_min, t_max, y):
        conds = (self.y_embedder(y), self.omega_embedder(1 - 1 / omega), self.cfg_t_start_embedder(t_min),
                 self.cfg_t_end_embedder(t_max), self.h_embedder(h))
        toks = [getattr(self, k) + e[:, None] for k, e in zip(_TOKENS, conds)]
        return torch.cat(toks + [self.x_embedder(z)], dim=1)

    def unpatchify(self, x):
        """[B, N, p * p * C] -> [B, C, H, W]."""
        cfg = self.config
        p, c, g = cfg.patch_size, cfg.in_channels, cfg.input_size // cfg.patch_size
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], g, g, p, p, c))
        return x.reshape(x.shape[0], c, g * p, g * p)

    def _outputs(self, z, t, u, v):
        return u, v

    def forward(self, z, t, h, omega, t_min, t_max, y):
        return self._outputs(z, t, *self.heads(z, t, h, omega, t_min, t_max, y))

    def heads(self, z, t, h, omega, t_min, t_max, y):
        """The two heads' outputs before the network's own conversion (`_outputs`): iMF's
        velocities (u, v); pMF's clean-image predictions (x_u, x_v), which pMF's loss and
        sampler convert with their t_clip_min."""
        cfg = self.config
        check_inputs(cfg, z, t, h, omega, t_min, t_max, y, dtype=self.u_final_layer.norm.weight.dtype)
        rope = (self.rope_cos, self.rope_sin)
        seq = self._sequence(z, h, omega, t_min, t_max, y)
        for blk in self.shared_blocks:
            seq = blk(seq, rope)
        u_seq = v_seq = seq
        for blk in self.u_heads:
            u_seq = blk(u_seq, rope)
        for blk in self.v_heads:
            v_seq = blk(v_seq, rope)
        n = cfg.prefix_tokens
        u = self.unpatchify(self.u_final_layer(u_seq[:, n:]))
        v = self.unpatchify(self.v_final_layer(v_seq[:, n:]))
        return u, v

    def derived_official_keys(self) -> tuple:
        """Keys of an official state dict that are derived constants, not parameters."""
        return ()


def load_official_state_dict(model: IMFDiT, state_dict) -> None:
    """Load an official torch-branch state dict (keys with or without "net."), strictly:
    every key and shape checked (named on error); derived constants are dropped."""
    sd = {k[4:] if k.startswith("net.") else k: v for k, v in state_dict.items()}
    for k in model.derived_official_keys():
        sd.pop(k, None)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_keys_and_shapes({k: tuple(v.shape) for k, v in sd.items()}, want, f"{type(model).__name__} state dict")
    model.load_state_dict(sd, strict=True)


def make_net_fn(model: IMFDiT):
    """net(z, t, h, omega, t_min, t_max, y) -> (u, v)."""

    def net(z, t, h, omega, t_min, t_max, y):
        return model(z, t, h, omega, t_min, t_max, y)

    return net
