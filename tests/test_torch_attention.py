"""JVP-capable attention: the fast kernel's JVP gap, and our attention's JVP = explicit softmax's."""
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from torch_meanflow.attention import attention, explicit_attention, has_tangent


def _qkv(n=5, m=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n, 8, generator=g, dtype=dtype)
    k = torch.randn(2, 3, m, 8, generator=g, dtype=dtype)
    v = torch.randn(2, 3, m, 8, generator=g, dtype=dtype)
    tangents = tuple(torch.randn(x.shape, generator=g, dtype=dtype) for x in (q, k, v))
    return (q, k, v), tangents


def test_default_sdpa_kernel_has_no_forward_ad():
    """The fact that makes this module necessary (PyTorch on CPU): the default kernel raises."""
    (q, k, v), tangents = _qkv(n=5, m=5, dtype=torch.float32)
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.func.jvp(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), (q, k, v), tangents)


@pytest.mark.parametrize("mode", ["plain", "causal", "mask", "cross"])
def test_jvp_equals_explicit_softmax_attention(mode):
    m = 7 if mode == "cross" else 5
    (q, k, v), tangents = _qkv(m=m)
    kw = {}
    if mode == "causal":
        kw = {"is_causal": True}
    if mode == "mask":
        kw = {"attn_mask": torch.rand(5, 5, generator=torch.Generator().manual_seed(3)) > 0.3}
        kw["attn_mask"].fill_diagonal_(True)
    ours = torch.func.jvp(lambda a, b, c: attention(a, b, c, **kw), (q, k, v), tangents)
    ref = torch.func.jvp(lambda a, b, c: explicit_attention(a, b, c, **kw), (q, k, v), tangents)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-12)
    # and the explicit JVP is the derivative: central finite difference along the tangents
    eps = 1e-6
    plus = explicit_attention(*(x + eps * t for x, t in zip((q, k, v), tangents)), **kw)
    minus = explicit_attention(*(x - eps * t for x, t in zip((q, k, v), tangents)), **kw)
    np.testing.assert_allclose(ref[1].numpy(), ((plus - minus) / (2 * eps)).numpy(), rtol=0, atol=1e-7)


def test_forward_ad_dual_tensors_also_work():
    (q, k, v), (tq, _, _) = _qkv()
    with fwAD.dual_level():
        dq = fwAD.make_dual(q, tq)
        assert has_tangent(dq) and not has_tangent(q)
        out = attention(dq, k, v, is_causal=True)
        tangent = fwAD.unpack_dual(out).tangent
    ref = torch.func.jvp(lambda a: explicit_attention(a, k, v, is_causal=True), (q,), (tq,))[1]
    np.testing.assert_allclose(tangent.numpy(), ref.numpy(), rtol=0, atol=1e-12)


def test_mask_and_is_causal_together_is_an_error():
    (q, k, v), _ = _qkv(m=5)
    with pytest.raises(ValueError, match="not both"):
        attention(q, k, v, attn_mask=torch.ones(5, 5, dtype=torch.bool), is_causal=True)


def test_dropout_one_mask_for_primal_and_tangent():
    """Under the JVP, dropout on the weights is one mask: the tangent equals a finite difference
    of the same dropped-out function (the RNG re-seeded for each evaluation)."""
    (q, k, v), (tq, _, _) = _qkv()

    def f(a):
        torch.manual_seed(7)
        return attention(a, k, v, dropout_p=0.5, training=True)

    _, tangent = torch.func.jvp(f, (q,), (tq,))
    eps = 1e-6
    fd = (f(q + eps * tq) - f(q - eps * tq)) / (2 * eps)
    np.testing.assert_allclose(tangent.numpy(), fd.numpy(), rtol=0, atol=1e-6)
    assert not torch.equal(f(q), attention(q, k, v))  # dropout did act


def _sdpa_reference(q, k, v, tangents, kw):
    """F.scaled_dot_product_attention at its default scale 1 / sqrt(d): the primal from the
    default kernel, the tangent by torch.func.jvp through the math kernel (the one with
    forward-mode formulas)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    primal = F.scaled_dot_product_attention(q, k, v, **kw)
    with sdpa_kernel(SDPBackend.MATH):
        _, tangent = torch.func.jvp(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, **kw), (q, k, v), tangents)
    return primal, tangent


@pytest.mark.parametrize("impl", ["fused", "math", "explicit"])
@pytest.mark.parametrize("mode", ["plain", "causal", "mask", "cross"])
def test_every_jvp_path_equals_sdpa_at_its_default_scale(impl, mode):
    from torch_meanflow.attention import jvp_attention

    (q, k, v), tangents = _qkv(m=7 if mode == "cross" else 5)
    kw = {"plain": {}, "cross": {}, "causal": {"is_causal": True}}.get(mode)
    if mode == "mask":
        kw = {"attn_mask": torch.rand(5, 5, generator=torch.Generator().manual_seed(3)) > 0.3}
        kw["attn_mask"].fill_diagonal_(True)
    ref_out, ref_tangent = _sdpa_reference(q, k, v, tangents, kw)
    with jvp_attention(impl):
        out, tangent = torch.func.jvp(lambda a, b, c: attention(a, b, c, **kw), (q, k, v), tangents)
    np.testing.assert_allclose(out.numpy(), ref_out.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tangent.numpy(), ref_tangent.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(attention(q, k, v, **kw).numpy(), ref_out.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(explicit_attention(q, k, v, **kw).numpy(), ref_out.numpy(), rtol=0, atol=1e-12)


def test_sdpa_comparison_catches_a_wrong_scale(monkeypatch):
    """Our explicit and fused paths share the formula, so comparing them cannot see a wrong
    scale; SDPA can: with 1 / d instead of 1 / sqrt(d) the check fails."""
    import sys

    attn_mod = sys.modules["torch_meanflow.attention"]  # the package exports a function of that name

    class WrongMath:
        sqrt = staticmethod(lambda x: x)

    monkeypatch.setattr(attn_mod, "math", WrongMath)
    with pytest.raises(AssertionError):
        test_every_jvp_path_equals_sdpa_at_its_default_scale("fused", "plain")
    with pytest.raises(AssertionError):
        test_every_jvp_path_equals_sdpa_at_its_default_scale("explicit", "causal")
