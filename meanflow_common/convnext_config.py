"""ConvNeXt-V2 feature network of pMF's perceptual term (pure Python, shared by both backends).

The structure is pMF's `models/convnext.py` (a ConvNeXt-V2 whose forward returns the
LayerNorm-ed, globally pooled features; the classification head is never called, so it has
no parameters). The official pMF loads `facebook/convnextv2-base-22k-224`: preset "base".
"""
from __future__ import annotations

from dataclasses import dataclass

from meanflow_common.fields import check_range, check_types

__all__ = ["ConvNeXtConfig", "CONVNEXT_PRESETS"]


@dataclass(frozen=True)
class ConvNeXtConfig:
    """depths / dims: blocks and channels of the 4 stages; the stem is a patch-4 conv, each
    later stage starts with LayerNorm + a 2x2 stride-2 conv. eps: every LayerNorm and the GRN.
    fast_variance: the final Flax LayerNorm's E[x^2] - E[x]^2 (Flax's default, which the official
    code uses); the torch twin always computes the two-pass variance, so float32 parity runs
    may set it False (float64 agrees either way)."""

    in_chans: int = 3
    depths: tuple = (3, 3, 27, 3)
    dims: tuple = (128, 256, 512, 1024)
    eps: float = 1e-6
    fast_variance: bool = True

    def __post_init__(self):
        check_types(self)
        check_range(self, "in_chans", 1)
        check_range(self, "eps", 0.0, lo_open=True)
        for name in ("depths", "dims"):
            value = getattr(self, name)
            if len(value) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise ValueError(f"ConvNeXtConfig.{name}={value!r} must be 4 positive ints (one per stage)")


CONVNEXT_PRESETS = {
    "base": ConvNeXtConfig(),
    "tiny": ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(4, 8, 8, 12)),
}
