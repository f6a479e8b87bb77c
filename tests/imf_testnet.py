"""A small random test network with the iMF / pMF call convention, in both backends.

net(z, t, h, omega, t_min, t_max, y) -> (out_u, out_v); JAX z [B, H, W, C], torch [B, C, H, W].
Every conditioning input enters nonlinearly:
    c = tanh([t, h, 1 - 1/omega, t_min, t_max] Wc + bc) + E[y]              [B, D]
    a = tanh(conv3x3(z) + c) * (1 + tanh(c Ws + bs))                        [B, H, W, D]
    out_u = a Wu + bu;  out_v = tanh(a Wh + bh) Wv + bv                     [B, H, W, C]
Parameters are a flat dict of NumPy float64 arrays in the JAX layout (conv HWIO, dense [in, out]);
`to_torch` converts them (conv OIHW, linear [out, in]) and `grads_to_jax` converts gradients back.
The branch bundle is hand-made so that one batch of 6 reaches every branch of the objectives.
"""
from __future__ import annotations

import numpy as np

C, D, NUM_CLASSES = 2, 5, 3
_LINEARS = ("Wc", "Ws", "Wu", "Wh", "Wv")


def make_params(seed: int = 0, channels: int = C, width: int = D, num_classes: int = NUM_CLASSES) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {
        "K": (3, 3, channels, width), "bK": (width,),
        "Wc": (5, width), "bc": (width,), "E": (num_classes + 1, width),
        "Ws": (width, width), "bs": (width,),
        "Wu": (width, channels), "bu": (channels,),
        "Wh": (width, width), "bh": (width,),
        "Wv": (width, channels), "bv": (channels,),
    }
    return {k: rng.normal(0.0, 0.7, s) for k, s in shapes.items()}


def to_torch(params: dict) -> dict:
    import torch

    out = {}
    for k, a in params.items():
        a = a.transpose(3, 2, 0, 1) if k == "K" else (a.T if k in _LINEARS else a)
        out[k] = torch.tensor(np.ascontiguousarray(a), dtype=torch.float64, requires_grad=True)
    return out


def grads_to_jax(grads: dict) -> dict:
    out = {}
    for k, g in grads.items():
        g = g.detach().numpy()
        out[k] = g.transpose(2, 3, 1, 0) if k == "K" else (g.T if k in _LINEARS else g)
    return out


def jax_net(p):
    import jax
    import jax.numpy as jnp

    def net(z, t, h, omega, t_min, t_max, y):
        feats = jnp.stack([t, h, 1 - 1 / omega, t_min, t_max], axis=-1)
        c = jnp.tanh(feats @ p["Wc"] + p["bc"]) + p["E"][y]
        conv = jax.lax.conv_general_dilated(z, p["K"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        a = jnp.tanh(conv + p["bK"] + c[:, None, None, :]) * (1 + jnp.tanh(c @ p["Ws"] + p["bs"]))[:, None, None, :]
        return a @ p["Wu"] + p["bu"], jnp.tanh(a @ p["Wh"] + p["bh"]) @ p["Wv"] + p["bv"]

    return net


def torch_net(p):
    import torch
    import torch.nn.functional as F

    def net(z, t, h, omega, t_min, t_max, y):
        feats = torch.stack([t, h, 1 - 1 / omega, t_min, t_max], dim=-1)
        c = torch.tanh(F.linear(feats, p["Wc"], p["bc"])) + F.embedding(y, p["E"])
        conv = F.conv2d(z, p["K"], p["bK"], padding=1).permute(0, 2, 3, 1)
        a = torch.tanh(conv + c[:, None, None, :]) * (1 + torch.tanh(F.linear(c, p["Ws"], p["bs"])))[:, None, None, :]
        out_u = F.linear(a, p["Wu"], p["bu"])
        out_v = F.linear(torch.tanh(F.linear(a, p["Wh"], p["bh"])), p["Wv"], p["bv"])
        return out_u.permute(0, 3, 1, 2), out_v.permute(0, 3, 1, 2)

    return net


# ----------------------------------------------------------------------------------
# The branch bundle: one batch of 6 reaching every branch
# ----------------------------------------------------------------------------------
# 0: fm and dropped; 1: fm with t outside its (hand-set) interval, so v_g_fm != the interval
# formula; 2: kept, inside, omega large; 3: kept, outside its interval (omega reset; t >= 0.8,
# perceptual mask off); 4: kept, inside, omega near 1; 5: kept, t < 0.05 (pMF's clip acts).
BUNDLE = dict(
    t=np.array([0.7, 0.3, 0.6, 0.9, 0.55, 0.03]),
    r=np.array([0.7, 0.3, 0.2, 0.5, 0.1, 0.01]),
    omega=np.array([3.0, 4.0, 7.9, 5.0, 1.0001, 2.5]),
    t_min=np.array([0.0, 0.5, 0.3, 0.2, 0.1, 0.0]),
    t_max=np.array([1.0, 0.9, 0.8, 0.7, 0.9, 0.5]),
    fm_mask=np.array([True, True, False, False, False, False]),
    drop_mask=np.array([True, False, False, False, False, False]),
)
HW = 4


def bundle_arrays(seed: int = 1, noise_scale: float = 1.0):
    """(x, e, y, fields) in NumPy float64, x and e [6, HW, HW, C] (JAX layout)."""
    rng = np.random.default_rng(seed)
    b = BUNDLE["t"].shape[0]
    x = rng.normal(size=(b, HW, HW, C))
    e = noise_scale * rng.normal(size=(b, HW, HW, C))
    y = np.array([2, 0, 1, 2, 0, 1])
    return x, e, y, {k: v.copy() for k, v in BUNDLE.items()}


def nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
