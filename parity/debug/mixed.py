"""Mixed precision as users train: float32 weights, bfloat16 matmuls.

- torch "bf16-mixed" (Lightning's name; FLOWER's default): the float32 module under
  `torch.autocast(dtype=bfloat16)`. Autocast runs matmuls, convolutions and linear layers in
  bfloat16 and leaves elementwise ops (the sinusoidal time embedding's `t * freqs`, its
  cos/sin) in the dtype of their float32 inputs, which is how FLOWER keeps its time embedding
  in float32. Two rows: the JVP inside autocast, and autocast disabled around the JVP, as
  py-meanflow and `torch_meanflow.objective.meanflow_loss` do (the network then runs in
  float32 whatever the surrounding autocast says).
- Flax "dtype=bfloat16, param_dtype=float32": every Flax layer (Dense, DenseGeneral, Conv,
  Embed, LayerNorm, RMSNorm, GroupNorm) run with `dtype=bfloat16` on its float32 parameters,
  by re-applying each layer call as a clone with that dtype (`flax.linen.intercept_methods`),
  so the networks need no dtype field. Parameters a module creates with `self.param` and uses
  in its own arithmetic stay float32, as they would in a Flax model whose layers all set dtype.

Rows have the precision matrix's keys; they are reported, never failed.
"""
from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch

from parity.core.compare import error_stats
from parity.core.sides import build_torch, jax_device
from parity.debug.capture import jax_point, torch_inputs
from torch_meanflow.attention import jvp_attention

FLAX_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Embed, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


def _bf16_layers(next_fun, args, kwargs, context):
    """Interceptor: a float32-computing Flax layer call re-run as its bfloat16-compute clone."""
    m = context.module
    if context.method_name != "__call__" or not isinstance(m, FLAX_LAYERS) or m.dtype == jnp.bfloat16:
        return next_fun(*args, **kwargs)
    clone = m.clone(parent=None, dtype=jnp.bfloat16)
    return clone.apply(dict(m.variables), *args, **kwargs)  # a LayerNorm without affine has no params


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def jax_mixed_u_du(arch, variant, params_np: dict, inputs, device: str = "cpu"):
    """(u, du/dt) of the JAX network (the output of the objective's network call and its
    tangent) with Flax layers at dtype=bfloat16, param_dtype=float32; float64 NumPy, JAX
    layout. Inputs and parameters float32."""
    module, _ = arch.jax_build(variant.model_cfg)

    def run(params, primals, tangents, fixed, y):
        def net(*primals):
            # jit off inside, as the capture does: an entry point that jits still runs its layers here
            with nn.intercept_methods(_bf16_layers), jax.disable_jit():
                return _first(inputs.jax_call(arch, module, params, primals, fixed, y))

        return jax.jvp(net, tuple(primals), tuple(tangents))

    with jax.default_device(jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params_np)
        primals, tangents, fixed, y = jax_point(arch, inputs, "float32")
        u, du = jax.jit(run)(params, primals, tangents, fixed, y)
    return np.asarray(u.astype(jnp.float32), np.float64), np.asarray(du.astype(jnp.float32), np.float64)


def torch_mixed_u_du(arch, module, inputs, device: str, jvp_in_autocast: bool, attention: str):
    """(u, du/dt) of the float32 torch network by `torch.func.jvp` inside a bfloat16 autocast
    block, with autocast left on for the JVP or disabled around it."""
    from parity.core.sides import from_torch

    primals, tangents, fixed, y = torch_inputs(arch, inputs, "float32", device)

    def jvp():
        return torch.func.jvp(lambda *p: _first(inputs.torch_call(arch, module, p, fixed, y)), primals, tangents)

    with torch.no_grad(), jvp_attention(attention), torch.autocast(device, dtype=torch.bfloat16), \
            warnings.catch_warnings():
        # rms_norm's note that bf16 input with a float32 weight takes the unfused kernel: expected here
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        if jvp_in_autocast:
            u, du = jvp()
        else:
            with torch.autocast(device, enabled=False):
                u, du = jvp()
    return tuple(from_torch(arch, x.float()) for x in (u, du))


def mixed_rows(case, ref_u, ref_du, f32_jax, rel) -> list[dict]:
    """The bf16-mixed rows: errors against the float64 JAX reference (`ref_u`, `ref_du`) and
    torch against its JAX counterpart (Flax bf16 compute; JAX float32 `f32_jax` for the row
    whose JVP runs outside autocast). `rel(ref, got)`: the matrix's relative error."""
    arch, device = case.arch, case.device
    ju, jdu = jax_mixed_u_du(arch, case.variant, case.params_np, case.inputs, device)
    module = build_torch(arch, case.variant.model_cfg, case.state_dict, "float32", device, case.control)
    settings = {"weights": "float32", "compute": "bfloat16 matmuls/convs"}
    rows = [dict(setting="bf16-mixed", dtype="float32+bf16", backend="jax", device=device,
                 u_rel=rel(ref_u, ju), du_dt_rel=rel(ref_du, jdu), u_rel_vs_jax=None, du_dt_rel_vs_jax=None,
                 settings=settings, note="Flax layers dtype=bfloat16, param_dtype=float32")]
    for in_autocast, label, (cu, cdu), note in (
            (True, "bf16-mixed", (ju, jdu), "torch.autocast bf16, JVP inside autocast"),
            (False, "bf16-mixed, fp32 JVP", f32_jax,
             "torch.autocast bf16, autocast off around the JVP (py-meanflow): the network runs in float32; "
             "vs JAX float32")):
        tu, tdu = torch_mixed_u_du(arch, module, case.inputs, device, in_autocast, case.attention)
        rows.append(dict(setting=label, dtype="float32+bf16", backend="torch", device=device,
                         u_rel=rel(ref_u, tu), du_dt_rel=rel(ref_du, tdu), u_rel_vs_jax=rel(cu, tu),
                         du_dt_rel_vs_jax=rel(cdu, tdu), settings=settings, note=note,
                         u_abs_vs_jax=error_stats(cu, tu)[0], du_dt_abs_vs_jax=error_stats(cdu, tdu)[0]))
    return rows
