"""PyTorch training of improved MeanFlow and pixel MeanFlow equals the JAX reference.

Both trainers run the tiny iMF / pMF recipe from one randomised state (torch, converted to
Flax through the "imf-dit" / "pmf-dit" tables), on the same digit batches, with one stream of
NumPy-drawn randomness (t, r, omega, the interval, the r = t and class-dropout masks, e;
`parity.train_parity`). In float64 every update's loss, gradient norm, weights and EMA agree to
rounding; the trained runs sample the same at a guidance scale and interval chosen at sampling
time. Negative controls: a torch port with MeanFlow's tangent e - x instead of the network's
own v_c (iMF), and one without pMF's clip of t in the x-to-velocity conversion (run where t
falls below the clip), each diverge from the first update.
"""
import jax
import numpy as np
import pytest

from parity.train_parity import parity_config, run_pair
from torch_meanflow import imf_objective, pmf_objective
from torch_meanflow import train as tt
from jax_meanflow import train as jt

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

jax.config.update("jax_enable_x64", True)
STEPS, BATCH = 6, 6
AGREE = 1e-10  # float64: the honest pair agrees to ~1e-15
# pMF with most t below the clip (0.05): the clip branch is exercised on most samples
PMF_SETS = ("pmf.P_mean=-3.0",)


def _worst(traj) -> float:
    return max(traj.worst().values())


@pytest.fixture(scope="module")
def imf_pair(tmp_path_factory):
    cfg = parity_config("float64", STEPS, BATCH, "tiny_imf")
    traj, results = run_pair(cfg, str(tmp_path_factory.mktemp("imf")))
    return cfg, traj, results


def test_imf_training_agrees_in_float64(imf_pair):
    _, traj, _ = imf_pair
    assert len(traj.rel_loss) == STEPS and traj.moved > 1e-3
    assert _worst(traj) < AGREE, traj.worst()


def test_imf_runs_sample_the_same_at_chosen_guidance(imf_pair):
    cfg, _, results = imf_pair
    labels = np.array([0, 4, 9, 2])
    s_jax = jt.make_sampler(cfg, results["jax"].model, results["jax"].state)
    s_torch = tt.make_sampler(cfg, results["torch"].model, results["torch"].state)
    for steps, knobs in ((1, {}), (2, {"omega": 2.5, "t_min": 0.1, "t_max": 0.9}),
                         (1, {"omega": np.array([1.0, 2.0, 4.0, 8.0])})):
        x_jax = s_jax(labels, num_steps=steps, seed=3, **knobs)
        np.testing.assert_allclose(s_torch(labels, num_steps=steps, seed=3, **knobs), x_jax, rtol=1e-10, atol=1e-10)
    # the knob changes the samples (the check above is not comparing constants)
    assert np.abs(s_jax(labels, seed=3, omega=1.0) - s_jax(labels, seed=3, omega=6.0)).max() > 1e-3


def test_imf_control_meanflow_tangent_diverges(tmp_path, monkeypatch):
    honest = imf_objective.guidance

    def e_minus_x_tangent(net, z, t, v_t, y, noise, null_y):
        v_g, _, v_u, omega_eff = honest(net, z, t, v_t, y, noise, null_y)
        return v_g, v_t, v_u, omega_eff  # the original MeanFlow's tangent

    monkeypatch.setattr(imf_objective, "guidance", e_minus_x_tangent)
    traj, _ = run_pair(parity_config("float64", 2, BATCH, "tiny_imf"), str(tmp_path))
    assert traj.rel_loss[0] > 1e-4 and traj.rel_grad_norm[0] > 1e-4, traj.worst()


@pytest.fixture(scope="module")
def pmf_pair(tmp_path_factory):
    cfg = parity_config("float64", STEPS, BATCH, "tiny_pmf", PMF_SETS)
    traj, results = run_pair(cfg, str(tmp_path_factory.mktemp("pmf")))
    return cfg, traj, results


def test_pmf_training_agrees_in_float64(pmf_pair):
    _, traj, _ = pmf_pair
    assert traj.moved > 1e-3 and _worst(traj) < AGREE, traj.worst()


def test_pmf_control_unclipped_conversion_diverges(tmp_path, monkeypatch):
    def unclipped(z, x_pred, t, cfg):
        return (z - x_pred) / t.reshape(-1, *[1] * (z.dim() - 1))

    monkeypatch.setattr(pmf_objective, "x_to_velocity", unclipped)
    traj, _ = run_pair(parity_config("float64", 2, BATCH, "tiny_pmf", PMF_SETS), str(tmp_path))
    assert traj.rel_loss[0] > 1e-4, traj.worst()


def test_the_method_benchmark_times_both_backends_on_one_problem():
    from parity.train_parity.bench_methods import bench_method, format_method

    rec = bench_method("tiny_imf", steps=1, warmup=1, compile_too=False, log=lambda *a: None)
    names = {r["name"] for r in rec["runners"] if "error" not in r}
    assert names == {"jax jit imf", "jax jit fm", "torch eager imf", "torch eager fm"}
    for objective, (j, t) in rec["first_step_loss"].items():  # the same weights, batch and randomness
        assert abs(j - t) <= 1e-4 * abs(t), (objective, j, t)
    assert rec["ratios"]["method_over_fm"]["torch eager"] > 1  # the guidance forwards and the JVP cost
    assert "imf / FM" in format_method(rec)
