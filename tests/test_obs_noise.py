"""Observation noise on training batches: exact values, determinism, refusals, and that the
trainer really trains on the noisy observations."""
import numpy as np
import pytest

from meanflow_common.data import batch_at
from meanflow_common.data.augment import obs_noise_draw, with_obs_noise
from meanflow_common.metrics import read_metrics
from meanflow_common.tasks import get_dataset
from meanflow_common.train_config import TRAIN_PRESETS, TrainConfig, apply_assignments


@pytest.fixture(scope="module")
def reach_data():
    return get_dataset("reach", 0)


def test_noise_is_added_to_the_observations_only(reach_data):
    clean = batch_at(reach_data, 3, 7, 16)
    noisy = with_obs_noise(batch_at, "obs", 0.05)(reach_data, 3, 7, 16)
    np.testing.assert_allclose(noisy["obs"] - clean["obs"], 0.05 * obs_noise_draw(3, 7, (16, 4)), atol=1e-7)
    np.testing.assert_array_equal(noisy["actions"], clean["actions"])
    assert noisy["obs"].dtype == np.float32 and np.abs(noisy["obs"] - clean["obs"]).max() > 0.01
    again = with_obs_noise(batch_at, "obs", 0.05)(reach_data, 3, 7, 16)
    np.testing.assert_array_equal(again["obs"], noisy["obs"])  # a pure function of (seed, step)
    other = with_obs_noise(batch_at, "obs", 0.05)(reach_data, 3, 8, 16)
    assert not np.allclose(other["obs"] - batch_at(reach_data, 3, 8, 16)["obs"], noisy["obs"] - clean["obs"])
    assert with_obs_noise(batch_at, "obs", 0.0) is batch_at


def test_bad_noise_settings_are_refused():
    with pytest.raises(ValueError, match="conditions on 'y'"):
        TrainConfig(task="digits", obs_noise=0.1)
    with pytest.raises(ValueError, match="obs_noise=-0.1"):
        TrainConfig(task="reach", model="tiny", obs_noise=-0.1)
    with pytest.raises(ValueError, match="finite"):
        TrainConfig(task="reach", model="tiny", obs_noise=float("inf"))
    with pytest.raises(ValueError, match="float 'y'"):
        with_obs_noise(lambda *a: {"y": np.arange(4)}, "y", 0.1)(None, 0, 0, 4)


def test_the_trainer_trains_on_noisy_observations(tmp_path):
    # the same run with and without noise: the first loss differs (a trainer ignoring the
    # field would give equal losses), a second noisy run repeats it exactly
    from torch_meanflow import train as tt

    losses = {}
    for name, std in (("clean", 0.0), ("noisy", 0.2), ("noisy_again", 0.2)):
        cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / name}", "steps=2",
                                                              "log_every=1", f"obs_noise={std}"])
        tt.train(cfg, progress=False)
        losses[name] = [r["loss"] for r in read_metrics(str(tmp_path / name / "metrics.csv"))]
    assert losses["noisy"] == losses["noisy_again"]
    assert losses["noisy"][0] != losses["clean"][0]

