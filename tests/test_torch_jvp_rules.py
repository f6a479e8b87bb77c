"""torch_meanflow.jvp_rules: every direct tangent rule against torch.func.jvp (float64).

Each case runs one op on a dual input under `TangentRules` and checks the primal, the
tangent and the gradient of the primal w.r.t. the op's parameters against plain
torch.func.jvp / autograd without the rules. A rule that silently falls back to PyTorch's
formula would also pass these checks, so `test_rules_fire` checks that each one applies.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from torch_meanflow import jvp_rules
from torch_meanflow.jvp_rules import TangentRules

torch.manual_seed(0)
D = 24
W = torch.randn(D, dtype=torch.float64).requires_grad_()
B = torch.randn(D, dtype=torch.float64).requires_grad_()
LIN = torch.randn(16, D, dtype=torch.float64).requires_grad_()
Y = torch.randn(3, 5, D, dtype=torch.float64)  # a second operand without tangent

CASES = {
    "linear": lambda x: F.linear(x, LIN, B[:16]),
    "layer_norm": lambda x: F.layer_norm(x, (D,), eps=1e-6),
    "layer_norm affine": lambda x: F.layer_norm(x, (D,), W, B, 1e-6),
    "rms_norm": lambda x: F.rms_norm(x, (D,), None, 1e-6),
    "rms_norm weight": lambda x: F.rms_norm(x, (D,), W, 1e-6),
    "rms_norm default eps": lambda x: F.rms_norm(x, (D,), W),
    "gelu tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu erf": lambda x: F.gelu(x),
    "silu": F.silu,
    "mul by constant": lambda x: x * Y,
    "dual times dual": lambda x: x * x.sin(),
    "divide": lambda x: Y / (x.exp() + 1.0),
    "modulate": lambda x: F.layer_norm(x, (D,), eps=1e-6) * (1 + W) + B,
}


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = 3.0 * torch.randn(3, 5, D, generator=g, dtype=torch.float64) + 0.5
    return x, torch.randn(3, 5, D, generator=g, dtype=torch.float64)


def _with_rules(fn, x, xt):
    with fwAD.dual_level(), TangentRules():
        out, tangent = fwAD.unpack_dual(fn(fwAD.make_dual(x, xt)))
    return out, tangent


def _params_grad(out, x):
    params = [x, W, B, LIN]
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_torch_func_jvp(name):
    fn = CASES[name]
    x, xt = _inputs()
    x.requires_grad_()
    out, tangent = _with_rules(fn, x, xt)
    ref_out, ref_tangent = torch.func.jvp(fn, (x,), (xt,))
    torch.testing.assert_close(out, ref_out, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(tangent, ref_tangent, rtol=1e-11, atol=1e-11)
    assert ref_tangent.abs().max() > 1e-3  # not a vacuous comparison
    # The primal stays differentiable w.r.t. input and parameters, with the usual gradient.
    for g, ref in zip(_params_grad(out, x), _params_grad(fn(x), x)):
        torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)


_T = torch.Tensor
CONV_W = torch.randn(2, 5, 3, 3, dtype=torch.float64)
# One call per entry of RULES that reaches that very entry with a dual first operand
# (the other operand without tangent, so that no rule steps aside).
# The operators are written as operators where that is how the entry is reached.
FIRE_CASES = {
    _T.add: lambda x: (x + Y) + (2.0 + x.add(Y)), torch.add: lambda x: torch.add(x, Y),
    _T.sub: lambda x: (x - Y) + x.sub(Y), torch.sub: lambda x: torch.sub(x, Y),
    _T.__rsub__: lambda x: 2.0 - x,
    _T.mul: lambda x: (x * Y) + 2.0 * x.mul(Y), torch.mul: lambda x: torch.mul(x, Y),
    _T.div: lambda x: x / (Y + 4.0) + x.div(Y + 4.0), torch.div: lambda x: torch.div(x, Y + 4.0),
    _T.__rtruediv__: lambda x: 2.0 / (x + 9.0),
    F.linear: CASES["linear"],
    F.conv2d: lambda x: F.conv2d(x.reshape(3, 5, 4, 6), CONV_W, None, 1, 1),
    F.gelu: CASES["gelu tanh"], F.silu: CASES["silu"],
    F.dropout: lambda x: F.dropout(x, 0.3, training=True),
    F.layer_norm: CASES["layer_norm affine"], F.rms_norm: CASES["rms_norm weight"],
}


def test_fire_cases_cover_every_rule():
    assert set(FIRE_CASES) == set(jvp_rules.RULES)


@pytest.mark.parametrize("func", list(FIRE_CASES), ids=lambda f: getattr(f, "__qualname__", str(f)))
def test_rules_fire(func, monkeypatch):
    """The rule is what computes the tangent: replacing it with a wrong one is seen."""
    right = jvp_rules.RULES[func]
    fired = []

    def wrong(f, args, kwargs):
        out = right(f, args, kwargs)
        if out is jvp_rules._SKIP:
            return out
        fired.append(f)
        primal, tangent = fwAD.unpack_dual(out)
        return fwAD.make_dual(primal, 1.01 * tangent)

    x, xt = _inputs()
    torch.manual_seed(3)  # the dropout case draws the same mask twice
    good = _with_rules(FIRE_CASES[func], x, xt)[1]
    monkeypatch.setitem(jvp_rules.RULES, func, wrong)
    torch.manual_seed(3)
    bad = _with_rules(FIRE_CASES[func], x, xt)[1]
    assert func in fired, f"the rule for {func} never ran"
    assert not torch.allclose(good, bad, rtol=1e-3, atol=0)


def test_norm_rule_without_mean_term_would_be_caught(monkeypatch):
    """Negative control: a LayerNorm tangent missing the mean(dx) term fails the check."""
    def no_centering(f, args, kwargs):
        x, xt = fwAD.unpack_dual(args[0])
        out = F.layer_norm(x, *args[1:], **kwargs)
        with torch.no_grad():
            rstd = torch.rsqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6)
            tangent = rstd * (xt - out * (xt * out).mean(-1, keepdim=True))
        return fwAD.make_dual(out, tangent)

    monkeypatch.setitem(jvp_rules.RULES, F.layer_norm, no_centering)
    x, xt = _inputs()
    fn = CASES["layer_norm"]
    _, tangent = _with_rules(fn, x, xt)
    _, ref = torch.func.jvp(fn, (x,), (xt,))
    assert (tangent - ref).abs().max() > 1e-3
