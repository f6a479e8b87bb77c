"""ConvNeXt-V2 features in PyTorch, twin of `jax_meanflow.convnext`, and the
`convnext_feature_distance` hook of pMF's perceptual loss.

Input [B, C, H, W]; output [B, dims[-1]]. State-dict names are facebookresearch/ConvNeXt-V2's
(`downsample_layers.{k}.{0,1}`, `stages.{i}.{j}.{dwconv,norm,pwconv1,grn,pwconv2}`, `norm`),
without the classification head; `parity/convert/tables/convnext.py` maps them to the Flax
tree. Numerics follow the official pMF JAX code: Flax "SAME" padding on the strided convs,
GRN with eps inside the square root, exact (erf) GELU.

Pretrained weights: `load_convnext_state_dict(path)` reads a torch-saved state dict (e.g. the
`pytorch_model.bin` of the Hugging Face checkpoint `facebook/convnextv2-base-22k-224`, which the
official pMF uses, or a facebookresearch `.pt` with a "model" entry), renames Hugging Face keys,
drops the classifier head, and returns names this module loads with `load_state_dict(strict=True)`.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from meanflow_common.convnext_config import ConvNeXtConfig

__all__ = ["ConvNextLayerNorm", "ConvNextGRN", "ConvNextBlock", "ConvNeXtV2", "convnext_feature_distance",
           "hf_to_convnext_names", "load_convnext_state_dict"]


class ConvNextLayerNorm(nn.Module):
    """LayerNorm over channels, two-pass variance; `channels_first` for [B, C, H, W] input."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_first: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps, self.channels_first = eps, channels_first

    def forward(self, x):
        axis = 1 if self.channels_first else -1
        mean = x.mean(dim=axis, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=axis, keepdim=True)
        shape = (1, -1, 1, 1) if self.channels_first else (-1,)
        return self.weight.view(shape) * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias.view(shape)


class ConvNextGRN(nn.Module):
    """Global response normalisation on channels-last [B, H, W, C] (formula: the JAX twin)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x):
        g = torch.sqrt((x ** 2).sum(dim=(1, 2), keepdim=True) + self.eps)
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


class _SameConv(nn.Conv2d):
    """Conv2d with Flax/TF "SAME" padding (low side total // 2)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class ConvNextBlock(nn.Module):
    """x + pwconv2(GRN(GELU_erf(pwconv1(LN(dwconv7x7(x)))))), [B, C, H, W]."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = ConvNextLayerNorm(dim, eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = ConvNextGRN(4 * dim, eps)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))
        return x + self.pwconv2(self.grn(F.gelu(h))).permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 features: x [B, in_chans, H, W] -> [B, dims[-1]]."""

    def __init__(self, config: ConvNeXtConfig):
        super().__init__()
        c = self.config = config
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(_SameConv(c.in_chans, c.dims[0], 4, stride=4), ConvNextLayerNorm(c.dims[0], c.eps, True))]
            + [nn.Sequential(ConvNextLayerNorm(c.dims[i], c.eps, True), _SameConv(c.dims[i], c.dims[i + 1], 2, stride=2))
               for i in range(3)]
        )
        self.stages = nn.ModuleList(
            [nn.Sequential(*[ConvNextBlock(c.dims[i], c.eps) for _ in range(c.depths[i])]) for i in range(4)]
        )
        self.norm = nn.LayerNorm(c.dims[-1], eps=c.eps)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"ConvNeXtV2 needs images [B, {self.config.in_chans}, H, W], got shape {tuple(x.shape)}")
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean(dim=(2, 3)))


def convnext_feature_distance(model: ConvNeXtV2) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """pMF's ConvNeXt hook: (pred_x, x) [B, C, H, W] -> [B], sum over features of
    (f(pred_x) - f(x))^2 (the official random resized crop is not applied: wrap the hook)."""

    def distance(pred_x, x):
        return ((model(pred_x) - model(x)) ** 2).sum(dim=-1)

    return distance


_HF_RULES = (  # Hugging Face ConvNextV2 names -> facebookresearch names (the official pMF's mapping)
    (r"^convnextv2\.embeddings\.patch_embeddings\.", "downsample_layers.0.0."),
    (r"^convnextv2\.embeddings\.layernorm\.", "downsample_layers.0.1."),
    (r"^convnextv2\.encoder\.stages\.([0-3])\.downsampling_layer\.(\d+)\.", r"downsample_layers.\1.\2."),
    (r"^convnextv2\.encoder\.stages\.([0-3])\.layers\.(\d+)\.", r"stages.\1.\2."),
    (r"^convnextv2\.layernorm\.", "norm."),
    (r"\.layernorm\.", ".norm."),
    (r"\.grn\.weight$", ".grn.gamma"),
    (r"\.grn\.bias$", ".grn.beta"),
)


def hf_to_convnext_names(state: dict) -> dict:
    """A ConvNeXt-V2 state dict with Hugging Face or facebookresearch names -> this module's
    names; the classifier head ("classifier.*" / "head.*") is dropped."""
    out = {}
    for name, value in state.items():
        if name.startswith(("classifier.", "head.")):
            continue
        for pattern, repl in _HF_RULES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def load_convnext_state_dict(path) -> dict:
    """Read a torch-saved ConvNeXt-V2 state dict from `path` (a {"model": state} file too) and
    return it in this module's names; errors name the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"cannot read ConvNeXt weights from {path}: {err}") from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return hf_to_convnext_names(state)
