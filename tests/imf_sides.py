"""Run the iMF / pMF losses of both backends on the same NumPy inputs (float64) and compare.

Outputs come back as NumPy in the JAX layout (data-shaped torch outputs transposed NCHW ->
NHWC), gradients likewise (`imf_testnet.grads_to_jax`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tests.imf_testnet import NUM_CLASSES, grads_to_jax, jax_net, nchw, nhwc, to_torch, torch_net

FIELDS = ("t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")


def _jax_noise(cls, e, f):
    import jax.numpy as jnp

    return cls(e=jnp.asarray(e), **{k: jnp.asarray(f[k]) for k in FIELDS})


def _torch_noise(cls, e, f):
    import torch

    return cls(e=torch.tensor(nchw(e)), **{k: torch.tensor(f[k]) for k in FIELDS})


def run_jax(loss_fn, noise_cls, params, x, e, y, f, cfg, **kw):
    """(outputs {name: array}, grads {param: array}) of JAX `loss_fn` (imf_loss / pmf_loss)."""
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in params.items()}
    noise = _jax_noise(noise_cls, e, f)

    def total(p):
        out = loss_fn(jax_net(p), jnp.asarray(x), jnp.asarray(y), noise, cfg, NUM_CLASSES, **kw)
        return out.loss, out

    (_, out), g = jax.value_and_grad(total, has_aux=True)(p)
    outs = {fl.name: np.asarray(getattr(out, fl.name)) for fl in dataclasses.fields(out)}
    return outs, {k: np.asarray(v) for k, v in g.items()}


def run_torch(loss_fn, noise_cls, params, x, e, y, f, cfg, **kw):
    """The torch twin of `run_jax` (same inputs in the JAX layout)."""
    import torch

    p = to_torch(params)
    noise = _torch_noise(noise_cls, e, f)
    out = loss_fn(torch_net(p), torch.tensor(nchw(x)), torch.tensor(y), noise, cfg, NUM_CLASSES, **kw)
    names = list(p)
    grads = torch.autograd.grad(out.loss, [p[k] for k in names], allow_unused=True)
    grads = {k: (torch.zeros_like(p[k]) if g is None else g) for k, g in zip(names, grads)}
    outs = {}
    for k, v in out.as_dict().items():
        a = v.detach().numpy()
        outs[k] = nhwc(a) if a.ndim == 4 else a
    return outs, grads_to_jax(grads)


def differences(a: dict, b: dict) -> dict:
    """{name: max |a - b| / max(1, max |a|)} over the shared names (bool arrays: count of mismatches)."""
    out = {}
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.shape == y.shape, (k, x.shape, y.shape)
        if x.dtype == bool:
            out[k] = float(np.sum(x != y))
        else:
            out[k] = float(np.max(np.abs(x - y)) / max(1.0, float(np.max(np.abs(x))))) if x.size else 0.0
    return out


def assert_agree(ref, got, tol=1e-10):
    for what, (ra, ga) in zip(("output", "gradient"), zip(ref, got)):
        bad = {k: d for k, d in differences(ra, ga).items() if d > tol}
        assert not bad, f"{what}s differ: {bad}"


def disagreeing(ref, got, tol=1e-6) -> set:
    """Names (outputs, and 'grad:<param>') where the two runs differ by more than tol."""
    outs = {k for k, d in differences(ref[0], got[0]).items() if d > tol}
    return outs | {f"grad:{k}" for k, d in differences(ref[1], got[1]).items() if d > tol}
