"""The torch JVP engine and attention are explicit options of the objective (`JvpOptions`), and
the context managers that remain are scoped: nothing one computation selects reaches another,
neither after it nor in another thread."""
import threading

import pytest
import torch

from meanflow_common.config import MeanFlowConfig
from torch_meanflow.attention import current_jvp_attention, jvp_attention
from torch_meanflow.objective import JvpOptions, MeanFlowNoise, current_jvp_options, jvp_engine, meanflow_loss

CFG = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0)


def _recording_u_fn(seen: list):
    """u = z * (1 + t) + h, recording (attention selected, engine) at every call with a tangent."""

    def u_fn(z, t, h, y, train):
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor(z)
        dual = torch.autograd.forward_ad.unpack_dual(z).tangent is not None
        if wrapped or dual:
            seen.append((current_jvp_attention(), "torch.func" if wrapped else "rules"))
        return z * (1 + t[:, None]) + h[:, None]

    return u_fn


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64)
    noise = MeanFlowNoise(e=torch.randn(3, 4, generator=g, dtype=torch.float64),
                          t=torch.tensor([0.9, 0.5, 0.3], dtype=torch.float64),
                          r=torch.tensor([0.9, 0.2, 0.1], dtype=torch.float64), drop_mask=torch.zeros(3, dtype=torch.bool))
    return x, noise


@pytest.mark.parametrize("engine", ["rules", "torch.func"])
@pytest.mark.parametrize("attention", ["fused", "math", "explicit"])
def test_explicit_options_reach_the_jvp_and_nothing_else(engine, attention):
    seen = []
    x, noise = _inputs()
    other = "rules" if engine == "torch.func" else "torch.func"
    with jvp_engine(other), jvp_attention("fused"):
        out = meanflow_loss(_recording_u_fn(seen), x, None, noise, CFG, jvp=JvpOptions(engine, attention))
        assert current_jvp_options() == JvpOptions(other, "fused")  # the enclosing blocks' selection
    assert seen == [(attention, engine)]  # the explicit options win over the enclosing blocks
    assert current_jvp_options() == JvpOptions()  # and nothing stays selected afterwards
    # du/dt of u = z (1 + t) + h along (v, 1, 0): v (1 + t) + z  (h = t - r moves with t)
    t = noise.t[:, None]
    z_t = (1 - t) * x + t * noise.e
    assert torch.allclose(out.du_dt, (noise.e - x) * (1 + t) + z_t + 1, rtol=0, atol=1e-12)


def test_context_managers_select_when_no_options_are_given():
    seen = []
    x, noise = _inputs()
    with jvp_engine("torch.func"), jvp_attention("explicit"):
        meanflow_loss(_recording_u_fn(seen), x, None, noise, CFG)
    meanflow_loss(_recording_u_fn(seen), x, None, noise, CFG)
    assert seen == [("explicit", "torch.func"), ("fused", "rules")]


def test_a_selection_in_one_thread_is_invisible_in_another():
    inside, release, seen = threading.Event(), threading.Event(), {}

    def selecting():
        with jvp_attention("math"), jvp_engine("torch.func"):
            seen["own"] = current_jvp_options()
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=selecting)
    worker.start()
    assert inside.wait(10)
    seen["other"] = current_jvp_options()  # while the worker's blocks are open
    release.set()
    worker.join(10)
    assert seen == {"own": JvpOptions("torch.func", "math"), "other": JvpOptions()}


def test_an_error_inside_a_block_restores_the_selection():
    with pytest.raises(RuntimeError, match="boom"):
        with jvp_attention("explicit"):
            raise RuntimeError("boom")
    assert current_jvp_attention() == "fused"


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="unknown JVP engine 'forward'"):
        JvpOptions("forward")
    with pytest.raises(ValueError, match="unknown JVP attention implementation 'sdpa'"):
        JvpOptions(attention="sdpa")
    with pytest.raises(ValueError, match="unknown JVP engine"):
        with jvp_engine("nope"):
            pass
