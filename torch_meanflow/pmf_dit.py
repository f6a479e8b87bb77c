"""The pixel MeanFlow network (official `pmfDiT`), PyTorch, NCHW.

Twin of `jax_meanflow.pmf_dit`; the call and differences from `IMFDiT` are listed there.
State-dict keys are the official torch branch's, except its `rope_freqs` buffer (a complex
float32 constant): here the 2-D rotary table is a float64-derived non-persistent buffer, and
`load_official_state_dict` accepts and drops an official `rope_freqs` entry. The label table
is `y_embedder.embedding_table._flax_embedding.weight` [num_classes + 1, D] (the JAX tree
holds it as [1, num_classes + 1, D]).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from meanflow_common.imf_config import PMFDiTConfig
from meanflow_common.imf_tables import pmf_rope_cos_sin
from torch_meanflow.imf_dit import IMFDiT, LabelEmbedder, check_inputs, load_official_state_dict, make_net_fn

__all__ = ["PMFDiT", "check_inputs", "make_net_fn", "load_official_state_dict"]


class BottleneckPatchEmbedder(nn.Module):
    def __init__(self, patch_size: int, pca_channels: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj1 = nn.Conv2d(in_channels, pca_channels, patch_size, stride=patch_size)
        self.proj2 = nn.Conv2d(pca_channels, hidden_size, 1)

    def forward(self, x):
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)


class PMFDiT(IMFDiT):
    token_lead = (1,)

    def __init__(self, config: PMFDiTConfig):
        super().__init__(config)
        n = config.prefix_tokens + config.num_patches
        self.pos_embed = nn.Parameter(torch.randn(1, n, config.hidden_size) * 0.02)

    def _embedders(self):
        cfg = self.config
        self.x_embedder = BottleneckPatchEmbedder(cfg.patch_size, cfg.pca_channels, cfg.in_channels, cfg.hidden_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size)

    def _set_rope(self):
        cos, sin = pmf_rope_cos_sin(self.config.head_dim, self.config.num_patches)
        self.set_table("rope_cos", cos)
        self.set_table("rope_sin", sin)

    def _v_final(self, out):
        if not self.config.eval:
            super()._v_final(out)
        else:
            self.v_final_layer = lambda x: x.new_zeros(x.shape[:2] + (out,))

    def _sequence(self, z, h, omega, t_min, t_max, y):
        return super()._sequence(z, h, omega, t_min, t_max, y) + self.pos_embed

    def _outputs(self, z, t, u, v):
        tc = t.to(z.dtype).clamp(0.05, 1.0)[:, None, None, None]
        return (z - u) / tc, (z - v) / tc

    def derived_official_keys(self) -> tuple:
        return ("rope_freqs",)
