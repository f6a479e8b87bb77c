"""Parameter randomisation and counting for torch modules.

Why randomise: the DiT (and FLOWER) zero-initialise their adaLN outputs and final layers,
so at initialisation u == 0 and du/dt == 0 and every parity or derivative check passes
vacuously. `randomize_params` replaces EVERY parameter, zero-initialised ones included.

Rule (the torch-layout twin of `jax_meanflow.params`), by the owning module:
- Linear / Conv weights: N(0, (scale / sqrt(fan_in))^2), fan_in = prod(shape[1:]);
- 1-D `weight` of any other module (norm gains): 1 + N(0, (0.1 scale)^2);
- biases and any other 1-D parameter: N(0, (0.1 scale)^2);
- Embedding tables (rows on dim 0) and any other parameter of rank >= 2: N(0, scale^2).
Numbers come from a float64 NumPy generator and are cast to each parameter's dtype; the
module's own RNG state is not touched.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["randomize_params", "count_params", "param_std"]


def param_std(module: nn.Module, name: str, shape: tuple[int, ...], scale: float = 1.0) -> tuple[float, float]:
    """(mean, std) of the random draw for parameter `name` of `module` with `shape`."""
    if name == "weight" and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return 0.0, scale / float(np.sqrt(np.prod(shape[1:])))
    if name == "weight" and len(shape) == 1:
        return 1.0, 0.1 * scale
    if len(shape) <= 1:
        return 0.0, 0.1 * scale
    return 0.0, scale


@torch.no_grad()
def randomize_params(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Overwrite every parameter of `module` in place (deterministic in `seed`); returns it."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(seed)
    for mod_name, mod in module.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.is_floating_point():
                raise TypeError(f"parameter {mod_name}.{name} has non-float dtype {p.dtype}; cannot randomise")
            shape = tuple(p.shape)
            mean, std = param_std(mod, name, shape, scale)
            values = mean + std * rng.standard_normal(shape)  # float64
            p.copy_(torch.from_numpy(values).to(device=p.device, dtype=p.dtype))
    return module


def count_params(module: nn.Module) -> int:
    """Total number of scalars in the module's parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
