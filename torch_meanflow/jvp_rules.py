"""Direct forward-mode tangent rules for the MeanFlow JVP (the "rules" engine).

PyTorch's forward-mode formulas give every operand that has no tangent (parameters,
buffers, Python numbers, constant tables) an "efficient zero" tangent, and each op on
such a zero computes its output shape through a Python meta function (torch._refs):
~0.3 ms per op on CPU with torch 2.13. They also record the tangent's computation for the
backward whenever the primal requires grad, which the MeanFlow loss never runs (du/dt is a
stop-gradient target), and normalisation layers go through long composite formulas.

`TangentRules` (a TorchFunctionMode, active inside `torch_meanflow.objective`'s JVP)
computes, under no_grad, the tangents of: linear and conv layers; + - * / with an operand
that has no tangent (or * / with two); GELU, SiLU; dropout (same mask as without tangents);
LayerNorm and RMSNorm over the last axis. Every other op runs PyTorch's own formula. The
primal always runs the same op on the primal values as without tangents, so u and its
gradient are unchanged; du/dt agrees with torch.func.jvp to rounding (tests/test_torch_objective.py).
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["TangentRules", "RULES"]

_T = torch.Tensor
# The operators reach __torch_function__ as these (torch 2.13: `a + b` and `2 + a` as
# Tensor.add, `a - b` as Tensor.sub, `*` as Tensor.mul, `a / b` as Tensor.div, `2 - a` as
# Tensor.__rsub__, `2 / a` as Tensor.__rdiv__ = __rtruediv__); the other dunders never arrive,
# so they have no entry (tests/test_torch_jvp_rules.py fires every entry).
_BINARY = {
    _T.add: "add", torch.add: "add",
    _T.sub: "sub", torch.sub: "sub", _T.__rsub__: "rsub",
    _T.mul: "mul", torch.mul: "mul",
    _T.div: "div", torch.div: "div", _T.__rtruediv__: "rdiv",
}
_SKIP = object()  # a rule does not apply: PyTorch's own formula runs


def _split(x):
    """(primal, tangent) of a forward-AD dual; (x, None) for anything else."""
    return fwAD.unpack_dual(x) if isinstance(x, torch.Tensor) else (x, None)


def _binary_tangent(kind: str, a, at, b, bt, out):
    # For the __r*__ methods `func(a, b)` computes b (op) a. One of at, bt may be None
    # (no tangent); the products and sums are PyTorch's formulas, term for term.
    if kind in ("add", "sub", "rsub"):  # one side has no tangent (both: PyTorch's formula)
        t = at if bt is None else bt
        negate = (kind == "sub" and bt is not None) or (kind == "rsub" and at is not None)
        return -t if negate else t
    if kind == "mul":
        if at is None or bt is None:
            return a * bt if at is None else at * b
        return bt * a + at * b
    if kind == "div":  # a / b
        if bt is None:
            return at / b
        return -(bt * out) / b if at is None else (at - bt * out) / b
    if at is None:  # rdiv: out = b / a
        return bt / a
    return -(at * out) / a if bt is None else (bt - at * out) / a


def _binary(func, args, kwargs):
    if kwargs or len(args) != 2:
        return _SKIP
    kind = _BINARY[func]
    (a, at), (b, bt) = _split(args[0]), _split(args[1])
    if (at is None and bt is None) or (at is not None and bt is not None and kind in ("add", "sub", "rsub")):
        return _SKIP  # no tangent, or PyTorch's formula already involves tangents only
    out = func(a, b)
    if not isinstance(out, torch.Tensor):  # NotImplemented: Python tries the other operand
        return out
    with torch.no_grad():
        tangent = _binary_tangent(kind, a, at, b, bt, out)
    return fwAD.make_dual(out, tangent.to(out.dtype).expand(out.shape))


def _linear(func, args, kwargs):  # F.linear(x, w, b) and F.conv2d(x, w, b, *geometry)
    (x, xt), rest = _split(args[0]), args[1:]
    if kwargs or xt is None or any(_split(w)[1] is not None for w in rest[:2]):
        return _SKIP
    out = func(x, *rest)
    with torch.no_grad():
        tangent = func(xt, rest[0], None, *rest[2:])
    return fwAD.make_dual(out, tangent)


def _activation(func, args, kwargs):  # F.gelu(x, approximate=...), F.silu(x)
    x, xt = _split(args[0])
    if xt is None or len(args) > 1 or kwargs.get("inplace"):
        return _SKIP
    approximate = kwargs.get("approximate", "none")
    out = F.gelu(x, approximate=approximate) if func is F.gelu else F.silu(x)
    with torch.no_grad():
        if func is F.gelu:
            tangent = torch.ops.aten.gelu_backward(xt, x, approximate=approximate)
        else:
            tangent = torch.ops.aten.silu_backward(xt, x)
    return fwAD.make_dual(out, tangent)


def _dropout(func, args, kwargs):
    # The mask is drawn as ATen's F.dropout draws it (CPU: bernoulli noise / (1 - p);
    # CUDA: native_dropout), so the same RNG state gives the same mask with or without
    # tangents; the tangent is scaled by the same mask.
    names = ("input", "p", "training", "inplace")
    given = {**dict(zip(names, args)), **kwargs}
    x, xt = _split(given["input"])
    p, training = given.get("p", 0.5), given.get("training", True)
    if xt is None or given.get("inplace") or not training or not 0.0 < p < 1.0 or x.device.type not in ("cpu", "cuda"):
        return _SKIP
    if x.device.type == "cpu":
        noise = torch.empty_like(x).bernoulli_(1.0 - p).div_(1.0 - p)
        out = x * noise
    else:
        out, mask = torch.native_dropout(x, p, True)
        noise = mask.to(x.dtype) * (1.0 / (1.0 - p))
    with torch.no_grad():
        tangent = xt * noise
    return fwAD.make_dual(out, tangent)


_NORM_ARGS = {F.layer_norm: ("input", "normalized_shape", "weight", "bias", "eps"),
              F.rms_norm: ("input", "normalized_shape", "weight", "eps")}


def _norm(func, args, kwargs):
    # Over the last axis, with xhat the normalised input and rstd = 1 / sqrt(var + eps)
    # (LayerNorm: var of x - mean(x); RMSNorm: mean(x^2)):
    #   d xhat = rstd * (dc - xhat * mean(dc * xhat)),  dc = dx - mean(dx) (RMSNorm: dx),
    # then times the weight; the bias adds nothing.
    given = {**dict(zip(_NORM_ARGS[func], args)), **kwargs}
    x, xt = _split(given["input"])
    weight, bias = given.get("weight"), given.get("bias")
    if (xt is None or len(given["normalized_shape"]) != 1
            or any(_split(p)[1] is not None for p in (weight, bias) if p is not None)):
        return _SKIP
    if func is F.layer_norm:
        eps = given.get("eps", 1e-5)
        out, mean, rstd = torch.native_layer_norm(x, given["normalized_shape"], weight, bias, eps)
    else:
        eps = given.get("eps")
        out = F.rms_norm(x, given["normalized_shape"], weight, eps)
    with torch.no_grad():
        if func is F.layer_norm:
            xhat = out if weight is None and bias is None else (x - mean) * rstd
            dc = xt - xt.mean(-1, keepdim=True)
        else:
            eps = torch.finfo(x.dtype).eps if eps is None else eps
            rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            xhat, dc = x * rstd, xt
        tangent = rstd * (dc - xhat * (dc * xhat).mean(-1, keepdim=True))
        if weight is not None:
            tangent = tangent * weight
    return fwAD.make_dual(out, tangent)


RULES = {**{f: _binary for f in _BINARY}, F.linear: _linear, F.conv2d: _linear, F.gelu: _activation,
         F.silu: _activation, F.dropout: _dropout, F.layer_norm: _norm, F.rms_norm: _norm}


class TangentRules(TorchFunctionMode):
    """Direct tangents, computed without autograd history, for linear and conv layers,
    + - * / with an operand that has no tangent (or * / with two), GELU, SiLU, dropout,
    LayerNorm and RMSNorm; everything else runs PyTorch's forward-mode formula."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = RULES.get(func)
        if rule is not None:
            out = rule(func, args, kwargs)
            if out is not _SKIP:
                return out
        return func(*args, **kwargs)
