"""Generic layers shared by the DiT and FLOWER networks (PyTorch).

Twin of `jax_meanflow.layers`. Module names follow facebookresearch/DiT and timm
(`mlp.0`, `mlp.2`, `fc1`, `fc2`, `weight`).

Dtypes: nothing here hard-codes float32. Constant tables come from
`meanflow_common.tables` (float64 NumPy) and live in `FixedTables` buffers, re-derived
from the float64 table after every cast (so `.to(dtype)` cannot round them twice) and
cast to the working dtype where they are used.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from meanflow_common.tables import timestep_frequencies

__all__ = [
    "FixedTables",
    "modulate",
    "timestep_embedding",
    "TimestepEmbedder",
    "LayerNorm",
    "RmsNorm",
    "Mlp",
]


class FixedTables(nn.Module):
    """Base of modules with fixed float64 NumPy tables (frequencies, positions).

    `set_table(name, table)` stores the table and exposes it as a non-persistent buffer
    `name` (not saved, not trained, moved with the module): tensors, not NumPy arrays, so
    torch.compile traces the model (Dynamo cannot guard on NumPy module attributes). After
    every cast or move the buffer is re-derived from the float64 table, so that e.g.
    `.float().double()` cannot leave a float32-rounded table behind.
    """

    def set_table(self, name: str, table) -> None:
        tables = self.__dict__.setdefault("_tables", {})
        tables[name] = np.array(table, dtype=np.float64)
        old = self._buffers.get(name)
        like = {"device": old.device, "dtype": old.dtype} if old is not None else {"dtype": torch.float64}
        self.register_buffer(name, torch.tensor(tables[name], **like), persistent=False)

    def table(self, name: str) -> np.ndarray:
        """A copy of the float64 table behind buffer `name`."""
        return self.__dict__["_tables"][name].copy()

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, table in self.__dict__.get("_tables", {}).items():
            old = self._buffers[name]
            self._buffers[name] = torch.tensor(table, dtype=old.dtype, device=old.device)
        return self


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, N, D], shift/scale [B, D] -> x * (1 + scale) + shift, broadcast over N."""
    return x * (1 + scale[:, None]) + shift[:, None]


def timestep_embedding(t: torch.Tensor, freqs) -> torch.Tensor:
    """Sinusoidal features of t [B] -> [B, 2 * len(freqs)], concat(cos(t f), sin(t f)).

    `freqs` [F]: a `FixedTables` buffer or a float64 NumPy table (e.g.
    `timestep_frequencies`), cast to t's float dtype (an integer t is promoted to the
    default float dtype).
    """
    if t.ndim != 1:
        raise ValueError(f"times must have shape [B], got {tuple(t.shape)}")
    dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    if not torch.is_tensor(freqs):
        freqs = torch.as_tensor(np.asarray(freqs, dtype=np.float64))
    f = freqs.to(device=t.device, dtype=dtype)
    args = t.to(dtype)[:, None] * f[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(FixedTables):
    """t [B] -> [B, hidden_size]: sinusoid(frequency_embedding_size) -> Linear -> SiLU -> Linear.

    `freq_scale` multiplies the float64 frequency table before the cast (FLOWER uses 1000;
    the DiT uses 1). t is cast to the weights' dtype (torch does not promote in F.linear).
    Parameters: `mlp.0.{weight,bias}`, `mlp.2.{weight,bias}`; normal(0.02) weights and zero
    biases are set by the owning network's initialisation.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256,
                 max_period: float = 10000.0, freq_scale: float = 1.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.set_table("freqs", timestep_frequencies(frequency_embedding_size, max_period) * freq_scale)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def reset_parameters(self, std: float = 0.02):
        """The reference initialisation: normal(std) weights, zero biases."""
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t.to(self.mlp[0].weight.dtype), self.freqs)
        if self.frequency_embedding_size % 2:  # odd size: the reference pads one zero feature
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.mlp(emb)


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the last axis without affine parameters (biased variance)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps, elementwise_affine=False)


class RmsNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis (timm's RmsNorm; Flax `scale`)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.rms_norm computes x * rsqrt(mean(x^2) + eps) * weight (bitwise the same as
        # writing it out) and has a direct tangent rule in the MeanFlow JVP.
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Mlp(nn.Module):
    """timm Mlp: fc1 (D -> hidden) -> GELU -> fc2 (hidden -> out, default D).

    `approximate="tanh"` is the DiT's GELU, "none" the erf form (FLOWER's encoder).
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None,
                 approximate: str = "tanh", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
