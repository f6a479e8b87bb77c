"""What every part of the harness does to put one float64 bundle and one set of weights onto
the two sides: dtype and device names, the bundle as each side's inputs, the torch module
with the converted weights, and arrays back to float64 NumPy in the JAX layout.

Used by the harness, the debugger and the benchmark alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from meanflow_common.keys import check_keys_and_shapes
from parity.convert.arrays import as_torch
from parity.core.inputs import InputBundle

DTYPES = ("float64", "float32", "bfloat16")
_JAX = {"float64": jnp.float64, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
_TORCH = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}


def jax_dtype(name: str):
    """The JAX dtype called `name` (float64, float32, bfloat16)."""
    if name not in _JAX:
        raise ValueError(f"unknown dtype {name!r}; choose from {list(DTYPES)}")
    return _JAX[name]


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (float64, float32, bfloat16)."""
    if name not in _TORCH:
        raise ValueError(f"unknown dtype {name!r}; choose from {list(DTYPES)}")
    return _TORCH[name]


def jax_device(device: str):
    """The first JAX device of kind `device` ("cpu" or "cuda")."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use cpu or cuda")
    return jax.devices("gpu" if device == "cuda" else "cpu")[0]


def jax_inputs(arch: Arch, variant: Variant, bundle: InputBundle, dtype: str):
    """(x, y, noise, null_y) of the JAX MeanFlow objective (`MEANFLOW.jax_inputs`): x [B, ...] (JAX layout), y the side's
    conditioning, noise a jax_meanflow MeanFlowNoise, null_y int32 [B] or None."""
    from jax_meanflow.objective import MeanFlowNoise

    jdt = jax_dtype(dtype)
    noise = MeanFlowNoise(e=jnp.asarray(bundle.e, jdt), t=jnp.asarray(bundle.t, jdt), r=jnp.asarray(bundle.r, jdt),
                          drop_mask=jnp.asarray(bundle.drop_mask))
    null = arch.null_y(variant, bundle.batch_size)
    null_y = None if null is None else jnp.asarray(null, jnp.int32)
    return jnp.asarray(bundle.x, jdt), arch.jax_y(bundle.y, jdt), noise, null_y


def to_torch_tensor(arch: Arch, a, dtype: str, device: str = "cpu", data: bool = False) -> torch.Tensor:
    """A float array as a torch tensor of `dtype` (a copy with standard strides, whatever the
    layout hook returned: `parity.convert.arrays`); `data`: an array of the data's shape,
    moved to torch's layout."""
    a = np.asarray(a)
    if data:
        a = arch.layout.to_torch(a)
    return as_torch(a, torch_dtype(dtype), device)


def torch_inputs(arch: Arch, variant: Variant, bundle: InputBundle, dtype: str, device: str = "cpu"):
    """(x, y, noise, null_y) of the torch MeanFlow objective (`MEANFLOW.torch_inputs`), x in torch's layout, null_y long [B] or None."""
    from torch_meanflow.objective import MeanFlowNoise

    noise = MeanFlowNoise(e=to_torch_tensor(arch, bundle.e, dtype, device, data=True),
                          t=to_torch_tensor(arch, bundle.t, dtype, device), r=to_torch_tensor(arch, bundle.r, dtype, device),
                          drop_mask=as_torch(bundle.drop_mask, torch.bool, device))
    null = arch.null_y(variant, bundle.batch_size)
    null_y = None if null is None else as_torch(null, torch.long, device)
    x = to_torch_tensor(arch, bundle.x, dtype, device, data=True)
    return x, arch.torch_y(bundle.y, torch_dtype(dtype), device), noise, null_y


def from_torch(arch: Arch, x: torch.Tensor, data: bool = True) -> np.ndarray:
    """A torch tensor as float64 NumPy, in the JAX layout when `data`."""
    a = x.detach().to("cpu", torch.float64).numpy()
    return arch.layout.from_torch(a) if data else a


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, assign: bool = False):
    """Load numpy arrays into `module`; missing, unexpected or mis-shaped keys are errors naming them.

    assign=True makes the arrays themselves the module's parameters where their dtype and
    device already fit (no second copy of the weights; writes to the parameters then write
    to the arrays): for a module that is evaluated, not trained."""
    own = module.state_dict()
    # Buffers (fixed tables) are the model's own: only the parameters must all be given.
    want = {k: tuple(p.shape) for k, p in module.named_parameters()}
    want.update({k: tuple(own[k].shape) for k in state_dict if k in own})
    check_keys_and_shapes({k: np.shape(a) for k, a in state_dict.items()}, want, "state dict for the torch model")

    def tensor(k, a):
        if not assign:
            return as_torch(a, own[k].dtype)
        # read-only memory or non-standard strides (a C_in = 1 kernel) are copied
        return as_torch(a, own[k].dtype, own[k].device, share=True)

    module.load_state_dict({k: tensor(k, a) for k, a in state_dict.items()}, strict=False, assign=assign)


def build_torch(arch: Arch, model_cfg, state_dict: dict, dtype: str, device: str = "cpu", control=None,
                train: bool = False, share: bool = False) -> torch.nn.Module:
    """The torch network of `model_cfg` in `dtype` on `device` with the converted weights (and
    a negative control's model bug), in eval mode unless `train` (dropout masks cannot match
    across frameworks, so comparisons run in eval mode); `share`: the state dict's arrays
    become the parameters (load_state_dict_strict(assign=True)), for evaluation only."""
    module = arch.torch_build(model_cfg).to(device=device, dtype=torch_dtype(dtype))
    load_state_dict_strict(module, state_dict, assign=share)
    if control is not None and control.model is not None:
        control.model(module)
    return module.train(train)
