"""Built-in data sets: shapes, ranges, determinism, disjoint splits, and a sound expert."""
import numpy as np
import pytest

from meanflow_common.data import batch_at, batch_indices, reach, steps_per_epoch

from meanflow_common.tasks import get_dataset


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def reach_data():
    return get_dataset("reach", seed=0)


def test_digits_shapes_and_ranges(digits):
    for split in (digits.train, digits.test):
        x, y = split["x"], split["y"]
        assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
        assert y.dtype == np.int64 and y.shape == (len(x),)
        assert x.min() == -1.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))
    assert len(digits.train["y"]) + len(digits.test["y"]) == 1797
    assert 0.18 < len(digits.test["y"]) / 1797 < 0.22


def test_digits_split_disjoint_and_fixed(digits):
    assert not set(digits.train["index"]) & set(digits.test["index"])
    other = get_dataset("digits", seed=5)  # the split does not depend on the data seed
    np.testing.assert_array_equal(other.test["index"], digits.test["index"])


def test_batch_at_deterministic_and_covers_epoch(digits):
    b1, b2 = batch_at(digits, 3, 7, 32), batch_at(digits, 3, 7, 32)
    for k in ("x", "y"):
        np.testing.assert_array_equal(b1[k], b2[k])
    assert b1["x"].shape == (32, 8, 8, 1) and b1["y"].shape == (32,)
    assert not np.array_equal(batch_at(digits, 3, 8, 32)["x"], b1["x"])
    assert not np.array_equal(batch_at(digits, 4, 7, 32)["x"], b1["x"])
    per_epoch = steps_per_epoch(digits, 100)
    idx = np.concatenate([batch_indices(digits, 0, s, 100) for s in range(per_epoch)])
    assert len(np.unique(idx)) == len(idx) == per_epoch * 100  # no repeat within an epoch
    nxt = batch_indices(digits, 0, per_epoch, 100)  # the next epoch reshuffles
    assert not np.array_equal(nxt, batch_indices(digits, 0, 0, 100))
    b1["x"][:] = 0  # batches are copies: the data set is untouched
    assert digits.train["x"].max() == 1.0


def test_bad_requests_are_named(digits):
    with pytest.raises(ValueError, match="unknown task"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="seed"):
        get_dataset("reach", seed=-1)
    with pytest.raises(ValueError, match="exceeds"):
        batch_at(digits, 0, 0, 10**6)
    with pytest.raises(ValueError, match="step"):
        batch_at(digits, 0, -1, 8)
    with pytest.raises(ValueError, match="split"):
        batch_at(digits, 0, 0, 8, split="val")


def test_reach_shapes_ranges_determinism(reach_data):
    b = batch_at(reach_data, 0, 0, 16)
    assert set(b) == {"obs", "actions"}
    assert b["obs"].dtype == np.float32 and b["obs"].shape == (16, reach.OBS_DIM)
    assert b["actions"].dtype == np.float32 and b["actions"].shape == (16, reach.CHUNK, 2)
    for split in (reach_data.train, reach_data.test):
        assert np.abs(split["actions"]).max() <= 1.0
        assert np.abs(split["obs"]).max() <= 1.0
    again = get_dataset("reach", seed=0)
    np.testing.assert_array_equal(again.train["actions"], reach_data.train["actions"])
    other = get_dataset("reach", seed=1)
    assert not np.array_equal(other.train["obs"][:50], reach_data.train["obs"][:50])


def test_reach_splits_share_no_demonstration(reach_data):
    start = lambda d: {tuple(r) for r in d["obs"][np.r_[True, np.diff(d["demo"]) != 0]]}  # noqa: E731
    assert not start(reach_data.train) & start(reach_data.test)


def test_chunks_follow_the_demonstrations(reach_data):
    """Within a demo, the next observation is the position moved by the chunk's first action."""
    d = reach_data.train
    same = d["demo"][1:] == d["demo"][:-1]
    moved = d["obs"][:-1, :2] + d["actions"][:-1, 0] * reach.MAX_STEP
    np.testing.assert_allclose(moved[same], d["obs"][1:, :2][same], atol=1e-6)
    np.testing.assert_array_equal(d["obs"][:-1, 2:][same], d["obs"][1:, 2:][same])


def test_expert_reaches_goal_around_both_sides():
    demos = reach.expert_demos(200, np.random.default_rng(123))
    assert demos["success"].all()
    assert 0.35 < demos["mode"].mean() < 0.65
    # Replay the recorded actions in the environment: goal reached, no collision, and the
    # side passed is the demo's mode.
    pos = demos["pos"][:, 0].copy()
    hit = np.zeros(200, bool)
    side = np.zeros(200)
    for k in range(demos["actions"].shape[1]):
        pos, h = reach.step(pos, demos["actions"][:, k])
        hit |= h
        side = np.where(np.abs(pos[:, 0]) < 0.05, np.sign(pos[:, 1]), side)
    assert not hit.any()
    assert (np.linalg.norm(pos - demos["goal"], axis=-1) < reach.GOAL_TOL).all()
    np.testing.assert_array_equal(side, np.where(demos["mode"] == 0, 1.0, -1.0))
    clearance = np.linalg.norm(demos["pos"] - reach.OBSTACLE_CENTER, axis=-1).min()
    assert clearance > reach.OBSTACLE_RADIUS + 0.1


def test_step_detects_collisions():
    p0 = np.array([[-0.28, 0.0], [-0.3, 0.5], [0.98, 0.0], [-0.26, 0.0]])
    a = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    _, hit = reach.step(p0, a)
    np.testing.assert_array_equal(hit, [True, False, True, False])  # into disc, clear, out of bounds, away
    # A segment passing through the disc between its endpoints counts (no tunnelling).
    assert reach.segment_hits_obstacle(np.array([[-0.3, 0.0]]), np.array([[0.3, 0.0]]))[0]
    with pytest.raises(ValueError, match="actions"):
        reach.step(p0, a[:, :1])
