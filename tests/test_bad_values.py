"""Bad values refused on both backends before any network call: NaN times in the objective,
NaN schedules, and sampling requests (labels, num_steps, noise) checked on the host (the JAX
sampler runs under jit, where label -1 silently picks the null class and 11 gives NaN)."""
from __future__ import annotations

import numpy as np
import pytest

from meanflow_common.config import MeanFlowConfig
from meanflow_common.train_config import TRAIN_PRESETS

NAN = float("nan")
# (t, r, words): every one passes a check written as `t < r or r < 0 or t > 1`
TIME_CASES = [
    ([0.5, NAN], [0.1, 0.1], "noise.t is not finite"),
    ([0.5, 0.5], [NAN, 0.1], "noise.r is not finite"),
    ([NAN, NAN], [NAN, NAN], "not finite"),
    ([0.5, float("inf")], [0.1, 0.1], "noise.t is not finite"),
    ([0.5, 0.2], [0.1, 0.3], "t < r at indices [1]"),
    ([1.5, 0.5], [0.1, 0.1], "must lie in [0, 1]"),
]


def _never_called(*args, **kwargs):
    raise AssertionError("the network was called with bad times")


@pytest.mark.parametrize("t, r, words", TIME_CASES)
def test_torch_objective_refuses_nan_and_out_of_order_times(t, r, words):
    import torch

    from torch_meanflow.objective import MeanFlowNoise, flow_matching_loss, meanflow_loss

    x = torch.randn(2, 3, dtype=torch.float64)
    noise = MeanFlowNoise(torch.randn(2, 3, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                          torch.tensor(r, dtype=torch.float64), torch.zeros(2, dtype=torch.bool))
    cfg = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0)
    for loss in (meanflow_loss, flow_matching_loss):
        with pytest.raises(ValueError) as err:
            loss(_never_called, x, None, noise, cfg)
        assert words in str(err.value)


@pytest.mark.parametrize("t, r, words", TIME_CASES)
def test_jax_objective_refuses_nan_and_out_of_order_times(t, r, words):
    import jax.numpy as jnp

    from jax_meanflow.objective import MeanFlowNoise, flow_matching_loss, meanflow_loss

    x = jnp.ones((2, 3), jnp.float32)
    noise = MeanFlowNoise(jnp.ones((2, 3), jnp.float32), jnp.asarray(t, jnp.float32), jnp.asarray(r, jnp.float32),
                          jnp.zeros((2,), bool))
    cfg = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0)
    for loss in (meanflow_loss, flow_matching_loss):
        with pytest.raises(ValueError) as err:
            loss(_never_called, x, None, noise, cfg)
        assert words in str(err.value)


@pytest.mark.parametrize("schedule", [[1.0, NAN, 0.0], [NAN, 0.0], [1.0, 0.2, 0.5]])
def test_both_solvers_refuse_nan_or_increasing_schedules(schedule):
    import jax.numpy as jnp
    import torch

    from jax_meanflow.solver import generate as jax_generate
    from torch_meanflow.solver import generate as torch_generate

    with pytest.raises(ValueError, match="schedule must decrease"):
        torch_generate(_never_called, torch.zeros(2, 3), None, schedule=schedule)
    with pytest.raises(ValueError, match="schedule must decrease"):
        jax_generate(_never_called, jnp.zeros((2, 3)), None, schedule=np.asarray(schedule))


# (call keywords, exception, words) of bad sampling requests on the tiny digits DiT (10 classes)
SAMPLE_CASES = [
    (dict(cond=np.array([0, -1])), ValueError, "labels must lie in [0, 10), got [-1]"),
    (dict(cond=np.array([3, 11])), ValueError, "got [11] at indices [1]"),
    (dict(cond=np.array([3, 10])), ValueError, "10 is the null class, pass allow_null=True"),
    (dict(cond=np.array([3.7, 1.0])), TypeError, "labels must be integers, got dtype float64"),
    (dict(cond=np.array([True, False])), TypeError, "labels must be integers, got dtype bool"),
    (dict(cond=np.array([[1, 2]])), ValueError, "labels must be [B]"),
    (dict(cond=np.arange(2), num_steps=0), ValueError, "num_steps must be an integer >= 1, got 0"),
    (dict(cond=np.arange(2), num_steps=2.0), ValueError, "num_steps must be an integer >= 1, got 2.0"),
    (dict(cond=np.arange(2), noise=np.zeros((2, 1, 8, 8))), ValueError, "noise has shape (2, 1, 8, 8)"),
    (dict(cond=np.arange(2), noise=np.full((2, 8, 8, 1), NAN)), ValueError, "noise holds NaN"),
]


@pytest.fixture(scope="module")
def samplers():
    import jax

    import jax_meanflow.train as J
    import torch_meanflow.train as T
    from jax_meanflow.train_state import create_train_state as jax_state
    from torch_meanflow.train_state import create_train_state as torch_state

    cfg = TRAIN_PRESETS["tiny"]
    model, params = J.make_model(cfg)
    net = T.make_model(cfg)
    assert jax.default_backend()  # backend initialised
    return {"jax": J.make_sampler(cfg, model, jax_state(params, cfg.optim)),
            "torch": T.make_sampler(cfg, net, torch_state(net, cfg.optim))}


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("kw, exc, words", SAMPLE_CASES, ids=[c[2][:30] for c in SAMPLE_CASES])
def test_samplers_check_the_request_on_the_host(samplers, backend, kw, exc, words):
    with pytest.raises(exc) as err:
        samplers[backend](**kw)
    assert words in str(err.value)


def test_the_null_class_is_sampled_only_when_asked(samplers):
    out = samplers["torch"](np.array([10, 3]), allow_null=True)
    assert out.shape == (2, 8, 8, 1) and np.all(np.isfinite(out))


def test_metrics_csv_with_a_cut_last_row_or_a_damaged_row(tmp_path):
    from meanflow_common.metrics import COLUMNS, read_metrics

    path = tmp_path / "metrics.csv"
    good = ",".join(["1"] + ["0.5"] * (len(COLUMNS) - 1))
    path.write_text(",".join(COLUMNS) + "\n" + good + "\n" + "2,0.4")  # killed while writing row 2
    assert [r["step"] for r in read_metrics(str(path))] == [1]
    path.write_text(",".join(COLUMNS) + "\n" + "x" + good[1:] + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r"metrics.csv: line 2 is not a metrics row"):
        read_metrics(str(path))
