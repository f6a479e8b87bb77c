"""Scaled dot-product attention that also works under forward-mode AD.

`F.scaled_dot_product_attention` has no forward-mode derivative for its flash,
memory-efficient and CPU-flash kernels: under `torch.func.jvp` (or
`torch.autograd.forward_ad`) they raise NotImplementedError. `attention` keeps the fast
kernel for plain forward passes and, when any input carries a tangent, switches to the
implementation chosen by the caller: `torch_meanflow.objective.JvpOptions(attention=name)`
passed to the objective, which selects it for the duration of its JVP only (a context
variable, so two computations in one process, or in two threads, never see each other's
choice); `jvp_attention(name)` is the same selection as a context manager for code that
runs forward-mode AD itself:

- "fused" (default): the primal is written out (scores, softmax, weights @ v) and the
  tangent comes from one closed-form rule on the saved softmax weights P:
  dS = s (dq k^T + q dk^T), dP = P * (dS - rowsum(P * dS)), dO = dP v + P dv.
  PyTorch's own forward-mode formulas take ~15 ops for this, several of them on
  "efficient zero" tangents whose shape logic runs in Python (about 0.3 ms each on CPU).
  The tangent is computed without autograd history (the MeanFlow target stops its
  gradient); the primal keeps its history, so the backward is the usual one.
- "math": SDPA's math kernel with PyTorch's forward-mode formulas.
- "explicit": `explicit_attention`, differentiated op by op by PyTorch.
- "flash": `JVPAttn.fwd_dual` of the `jvp-flash-attention` package (Triton, CUDA, when
  installed), for self-attention without mask tensor or dropout; other calls take "fused".

FLOWER's code passes an explicit causal mask AND `is_causal=True`; the math kernel
rejects that combination ("Explicit attn_mask should not be set when is_causal=True"),
so this function takes one or the other, never both.

Dropout on the attention weights is drawn the same way on every path that applies it
(`empty_like(weights).bernoulli_(1 - p)`, as PyTorch's CPU math kernel does), so the plain
forward and the forward under a JVP draw the same mask from the same RNG state (the
memory-saving MeanFlow path relies on that).
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["attention", "explicit_attention", "has_tangent", "jvp_attention", "current_jvp_attention",
           "check_jvp_attention", "JVP_IMPLS"]

JVP_IMPLS = ("fused", "math", "explicit", "flash")
# The implementation for inputs that carry a tangent, scoped to a context (thread, task and
# `with` block): set only through `jvp_attention`, reset when the block ends.
_JVP_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("torch_meanflow_jvp_attention", default=JVP_IMPLS[0])


def check_jvp_attention(name: str) -> str:
    """`name` if it is one of JVP_IMPLS and usable here, else an error naming the problem."""
    if name not in JVP_IMPLS:
        raise ValueError(f"unknown JVP attention implementation {name!r}; choose from {list(JVP_IMPLS)}")
    if name == "flash":
        _flash_kernel()  # fail here, with the reason, rather than inside the model
    return name


def current_jvp_attention() -> str:
    """The implementation selected in this context (default "fused")."""
    return _JVP_IMPL.get()


@contextlib.contextmanager
def jvp_attention(name: str):
    """Within the block (and this context only): attention implementation `name` (one of
    JVP_IMPLS) for inputs that carry a tangent."""
    token = _JVP_IMPL.set(check_jvp_attention(name))
    try:
        yield
    finally:
        _JVP_IMPL.reset(token)


def has_tangent(*tensors: torch.Tensor) -> bool:
    """True when any tensor is inside a forward-AD transform (torch.func.jvp or forward_ad)."""
    for x in tensors:
        if torch._C._functorch.is_functorch_wrapped_tensor(x):
            return True
        if fwAD.unpack_dual(x).tangent is not None:
            return True
    return False


def _keep_mask(attn_mask, is_causal, n: int, m: int, device):
    if is_causal:
        return torch.ones(n, m, dtype=torch.bool, device=device).tril()
    return attn_mask


def _dropout_noise(weights: torch.Tensor, p: float) -> torch.Tensor:
    # The same draws and arithmetic as ATen's CPU dropout: bernoulli(1 - p) / (1 - p).
    return torch.empty_like(weights).bernoulli_(1.0 - p).div_(1.0 - p)


def explicit_attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, training=False):
    """softmax(q k^T / sqrt(d)) v written out; the reference the fast paths are checked against.

    q: [B, H, N, d], k, v: [B, H, M, d], attn_mask: bool [N, M] or [B, 1|H, N, M] (True = keep).
    Returns [B, H, N, d].
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
    mask = _keep_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0 and training:
        weights = weights * _dropout_noise(weights, dropout_p)
    return weights @ v


def _fused(q, k, v, mask, p: float):
    """Attention with a closed-form tangent; q, k, v may be forward-AD duals."""
    (qp, qt), (kp, kt), (vp, vt) = (fwAD.unpack_dual(x) for x in (q, k, v))
    scale = 1.0 / math.sqrt(qp.shape[-1])
    scores = (qp * scale) @ kp.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    noise = _dropout_noise(weights, p) if p > 0.0 else None
    dropped = weights * noise if noise is not None else weights
    out = dropped @ vp
    if qt is None and kt is None and vt is None:
        return out
    with torch.no_grad():
        w, tangent = weights.detach(), None
        if qt is not None or kt is not None:
            ds = (qt * scale) @ kp.detach().transpose(-2, -1) if qt is not None else 0.0
            if kt is not None:
                ds = ds + (qp.detach() * scale) @ kt.transpose(-2, -1)
            dw = w * (ds - (w * ds).sum(dim=-1, keepdim=True))
            tangent = (dw * noise if noise is not None else dw) @ vp.detach()
        if vt is not None:
            dv = dropped.detach() @ vt
            tangent = dv if tangent is None else tangent + dv
    return fwAD.make_dual(out, tangent)


def _flash_kernel():
    if not torch.cuda.is_available():
        raise RuntimeError("JVP attention 'flash' needs a CUDA GPU (Triton kernel)")
    try:
        from jvp_flash_attention.jvp_attention import JVPAttn
    except ImportError as err:
        raise RuntimeError("JVP attention 'flash' needs the jvp-flash-attention package "
                           "(pip install jvp-flash-attention)") from err
    return JVPAttn


def _flash_fits(q, k, attn_mask, p: float) -> bool:
    """The Triton kernel's limits: self-attention of one length, head dim 16..256 (powers of
    two), no mask tensor, no dropout. Other calls take the fused rule."""
    return (q.is_cuda and attn_mask is None and p == 0.0 and q.shape[-2] == k.shape[-2]
            and q.shape[-1] in (16, 32, 64, 128, 256))


def attention(q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, training=False):
    """Attention as `F.scaled_dot_product_attention`, differentiable in forward mode.

    Shapes as in `explicit_attention`. Give `attn_mask` (bool, True = keep) or
    `is_causal`, not both. Dropout on the attention weights is applied only when training.
    """
    if attn_mask is not None and is_causal:
        raise ValueError("give attn_mask or is_causal, not both (the math kernel rejects both)")
    p = dropout_p if training else 0.0
    if torch.compiler.is_compiling():
        # Tangents are invisible to the tracer; the math kernel differentiates both ways.
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
    impl = _JVP_IMPL.get() if has_tangent(q, k, v) else None
    if impl == "flash" and _flash_fits(q, k, attn_mask, p):
        return _flash_kernel().fwd_dual(q, k, v, causal=is_causal)
    if impl in ("fused", "flash") or (impl is None and p > 0.0):
        return _fused(q, k, v, _keep_mask(attn_mask, is_causal, q.shape[-2], k.shape[-2], q.device), p)
    if impl == "explicit":
        return explicit_attention(q, k, v, attn_mask, is_causal, dropout_p, training)
    if impl == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, is_causal=is_causal)
