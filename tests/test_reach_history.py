"""The two-frame reach observations (reach_history) and the side probe: known answers."""
import numpy as np
import pytest

from meanflow_common.data import reach, reach_dataset, reach_history_dataset
from meanflow_common.evaluate.expert_policy import ExpertPolicy
from meanflow_common.evaluate.reach_probe import data_above, side_probe
from meanflow_common.evaluate.rollout import rollout
from meanflow_common.evaluate.table import format_table
from meanflow_common.tasks import get_task


def test_history_observations_carry_the_last_executed_action():
    demos = reach.expert_demos(3, np.random.default_rng(5))
    plain, hist = reach.chunk_demos(demos), reach.chunk_demos(demos, history=True)
    assert plain["obs"].shape[1] == 4 and hist["obs"].shape[1] == 6
    np.testing.assert_array_equal(hist["obs"][:, :4], plain["obs"])
    np.testing.assert_array_equal(hist["actions"], plain["actions"])
    for i in range(3):
        rows = np.flatnonzero(hist["demo"] == i)
        np.testing.assert_array_equal(hist["obs"][rows[0], 4:], 0.0)  # at rest at the start
        # the displacement from step k - 1 is the expert's action k - 1 (already within [-1, 1])
        np.testing.assert_allclose(hist["obs"][rows[1:], 4:], demos["actions"][i, : len(rows) - 1], atol=1e-5)


def test_the_history_dataset_is_the_same_demonstrations():
    a, b = reach_dataset(1), reach_history_dataset(1)
    np.testing.assert_array_equal(a.train["obs"], b.train["obs"][:, :4])
    assert b.info["obs_dim"] == 6 and b.info["history"] and not a.info["history"]
    assert get_task("reach_history").dataset(1).train["obs"].shape[1] == 6


def test_rollouts_observe_the_last_step():
    seen = []

    def policy(obs, noise):
        seen.append(obs.copy())
        return np.full((len(obs), reach.CHUNK, 2), [0.5, 0.25])

    rollout(policy, n=4, seed=0, execute=3, max_steps=6, history=True)
    assert seen[0].shape == (4, 6)
    np.testing.assert_array_equal(seen[0][:, 4:], 0.0)
    np.testing.assert_allclose(seen[1][:, 4:], [[0.5, 0.25]] * 4, atol=1e-5)
    seen.clear()
    rollout(policy, n=4, seed=0, execute=3, max_steps=6)
    assert seen[0].shape == (4, 4)


def test_the_expert_drives_history_observations_and_refuses_other_widths():
    result = rollout(ExpertPolicy(0), n=20, seed=0, history=True)
    assert result.success.mean() >= 0.95
    with pytest.raises(ValueError, match=r"\[n, 4\] or \[n, 6\]"):
        ExpertPolicy(0)(np.zeros((2, 5)), np.zeros((2, 10, 2)))


def _sided(sign):
    chunk = np.zeros((len(sign), reach.CHUNK, 2))
    chunk[..., 0], chunk[..., 1] = 0.6, 0.6 * sign[:, None]
    return chunk


@pytest.mark.parametrize("history", [False, True])
def test_side_probe_known_answers(history):
    train = (reach_history_dataset if history else reach_dataset)(0).train
    by_noise = side_probe(lambda o, n: _sided(np.sign(n[:, 0, 0])), train, history=history)
    assert by_noise["policy_covered"] == 20 and by_noise["noise_share"] > 0.95
    by_start = side_probe(lambda o, n: _sided(np.where(o[:, 1] > 0, 1.0, -1.0)), train, history=history)
    assert by_start["policy_covered"] == 0 and by_start["noise_share"] < 1e-9 and by_start["sign_agreement"] == 20
    against = side_probe(lambda o, n: _sided(np.where(o[:, 1] > 0, -1.0, 1.0)), train, history=history)
    assert against["sign_agreement"] == 0
    # near a start the plain observations' training chunks mostly go to the side of the
    # start's y offset (17 of 20 starts on seed 0's data); the two-frame ones do not (12)
    if history:
        assert by_noise["data_sign_agreement_h0.02"] <= 13
    else:
        assert by_noise["data_sign_agreement_h0.02"] >= 15


def test_the_table_formats_a_task_by_its_metrics():
    rec = {"task": "reach_history", "run": "r", "backend": "torch", "method": "meanflow", "train_steps": 1,
           "num_steps": 1, "success_rate": 1.0, "collision_rate": 0.0, "timeout_rate": 0.0, "success_above": 1,
           "success_below": 1, "mode_entropy_bits": 1.0, "coverage_covered": 17, "coverage_starts": 20,
           "coverage_draws": 50, "coverage_min_fraction": 0.1, "clearance_median": 0.25, "path_length_median": 1.9,
           "first_chunk_above": 0.5, "first_chunk_between": 0.0, "first_chunk_below": 0.5}
    text = format_table([rec, {"task": "other", "run": "x", "backend": "jax", "method": "m", "train_steps": 2,
                               "num_steps": 1, "score": 0.5}])
    assert "**reach_history**" in text and "17 / 20" in text
    assert "**other**" in text and "| score |" in text and "0.5" in text


def test_data_above_known_answers():
    train = {"obs": np.array([[0, 0.1, 0, 0], [0, -0.1, 0, 0], [0, 0.1, 0, 0]], np.float32),
             "mode": np.array([0, 1, 0])}
    q = np.array([[0, 0.1, 0, 0], [0, -0.1, 0, 0], [0, 0.0, 0, 0]])
    np.testing.assert_allclose(data_above(train, q, 0.001), [1.0, 0.0, 2 / 3], atol=1e-9)
    np.testing.assert_allclose(data_above(train, q, 100.0), [2 / 3] * 3, atol=1e-6)
    with pytest.raises(ValueError, match="bandwidth"):
        data_above(train, q, 0.0)
    with pytest.raises(ValueError, match=r"\[n, 4\]"):
        data_above(train, q[:, :2], 0.1)
