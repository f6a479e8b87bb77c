"""NumPy arrays handed to torch: the one place where the harness, the debugger, the benchmark
and the converter turn an array into a tensor.

torch reads the stride of a size-1 dimension when it picks a memory format. An NCHW array
with C = 1 made by `np.ascontiguousarray(a.transpose(0, 3, 1, 2))` keeps the strides of the
transpose (NumPy counts it as contiguous already), so torch sees it as channels_last as well,
and GroupNorm's forward-mode rule then fails on its `.view`. Every tensor made here has the
standard row-major strides of its shape, whatever strides the array (or a layout hook) had.
"""
from __future__ import annotations

import numpy as np
import torch


def standard_strides(shape: tuple, itemsize: int = 1) -> tuple:
    """Row-major strides of `shape` (stride[i] = itemsize * prod(shape[i+1:])), in units of
    `itemsize` (NumPy: bytes; torch: elements, itemsize 1)."""
    out, acc = [], itemsize
    for n in reversed(shape):
        out.append(acc)
        acc *= max(int(n), 1)
    return tuple(reversed(out))


def as_torch(a, dtype: torch.dtype | None = None, device="cpu", share: bool = False) -> torch.Tensor:
    """`a` (any shape [...], NumPy or anything np.asarray takes) as a torch tensor of `dtype`
    (default: the array's) on `device`, with standard strides; a copy unless `share`, where a
    writable CPU array that already has standard strides and the dtype becomes the tensor's
    memory (no second copy of the weights)."""
    a = np.asarray(a)
    if (share and a.flags.writeable and a.strides == standard_strides(a.shape, a.itemsize)
            and torch.device(device).type == "cpu"):
        t = torch.from_numpy(a)
        if dtype is None or t.dtype == dtype:
            return t
    # torch.from_numpy needs a writable array with non-negative strides; the values are then
    # copied into a fresh tensor (torch.empty: standard strides) in the target dtype and device.
    src = a if a.flags.writeable and all(s >= 0 for s in a.strides) else np.array(a, order="C")
    src = torch.from_numpy(src)
    out = torch.empty(a.shape, dtype=src.dtype if dtype is None else dtype, device=device)
    return out.copy_(src)
