"""The separating metrics on constructed cases with a known answer: k-NN precision / recall,
within-class diversity, the digit baselines, mode entropy, per-start mode coverage,
clearance and path length, and the reach expert."""
import numpy as np
import pytest

from meanflow_common.data import reach

from meanflow_common.tasks import get_dataset
from meanflow_common.evaluate import (
    DIGIT_BASELINES,
    ExpertPolicy,
    diversity_ratio,
    evaluate_digits,
    get_classifier,
    knn_precision_recall,
    knn_radii,
    mode_coverage,
    mode_entropy,
    path_stats,
    rollout,
    rollout_metrics,
)
from tests.test_evaluate import _around_policy


@pytest.fixture(scope="module")
def held_out():
    data = get_dataset("digits")
    return get_classifier().features(data.test["x"]), data.test["y"]


def test_knn_hand_computed_case():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    np.testing.assert_allclose(knn_radii(real, k=1), [1, 1, 1, 1, 7])  # the point itself is not a neighbour
    np.testing.assert_allclose(knn_radii(real, k=2), [2, 1, 1, 2, 8])
    fake = np.array([[2.5], [20.0], [21.0]])
    # 2.5 lies in the ball of 2 (radius 1); 20 and 21 in no real ball (10's reaches 17).
    # Recall: 2.5's ball (radius 17.5, to 20) holds every real point.
    out = knn_precision_recall(real, fake, k=1)
    assert out == {"precision": pytest.approx(1 / 3), "recall": 1.0, "k": 1}
    far = knn_precision_recall(real, fake + 100.0, k=1)
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_knn_reference_against_itself_and_single_point(held_out):
    feats, _ = held_out
    same = knn_precision_recall(feats, feats)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["k"] == 3
    # One image repeated: radius 0, so it covers only itself among the real points.
    single = knn_precision_recall(feats, np.repeat(feats[:1], 200, 0))
    assert single["recall"] <= 1 / len(feats) + 1e-12 and single["precision"] == 1.0


def test_knn_rejects_bad_input():
    f = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(ValueError, match="k must be"):
        knn_radii(f, k=0)
    with pytest.raises(ValueError, match="more than k = 3"):
        knn_precision_recall(f, f[:3])
    with pytest.raises(ValueError, match="same D"):
        knn_precision_recall(f, f[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        knn_precision_recall(f, np.full((5, 4), np.nan))


def test_diversity_ratio_known_scalings(held_out):
    feats, labels = held_out
    assert diversity_ratio(feats, labels, feats, labels) == pytest.approx(1.0)
    means = np.stack([feats[labels == c].mean(0) for c in range(10)])
    half = means[labels] + 0.5 * (feats - means[labels])
    assert diversity_ratio(half, labels, feats, labels) == pytest.approx(0.5)
    assert diversity_ratio(means[labels], labels, feats, labels) == pytest.approx(0.0, abs=1e-12)
    # Wrong labels mix the classes: more spread than any single class has.
    assert diversity_ratio(feats, np.roll(labels, 7), feats, labels) > 1.2


def test_trivial_baselines_score_below_real_digits_on_recall():
    scores = {name: evaluate_digits(factory(0), n_per_class=50) for name, factory in DIGIT_BASELINES.items()}
    real, mean, noisy = scores["real training digits"], scores["class mean"], scores["class mean + noise"]
    # Accuracy saturates: the repeated class mean is "perfect" on it ...
    assert mean["accuracy"] == 1.0
    # ... recall and diversity are not fooled.
    assert real["recall"] > 0.7 and 0.85 < real["diversity_ratio"] < 1.15 and real["precision"] > 0.85
    assert mean["recall"] < 0.02 and mean["diversity_ratio"] == pytest.approx(0.0, abs=1e-9)
    assert noisy["recall"] < real["recall"] - 0.5 and noisy["precision"] < real["precision"]
    assert real["fd"] < mean["fd"] / 5 and real["pr_reference"] == "held-out digits (359)"
    # FD alone misranks the shrunk digits (below every trained model's ~3.5 and near the copier);
    # recall exposes them. Mode collapse: recall 0, 20 distinct samples.
    shrunk, collapse = scores["shrunk to class mean"], scores["mode collapse (2 per class)"]
    assert shrunk["fd"] < 10 and shrunk["recall"] < 0.1 and shrunk["exact_copy_fraction"] == 0.0
    assert collapse["recall"] == 0.0 and collapse["distinct"] == 20 and collapse["fd"] > 15


def test_mode_entropy_known_splits():
    assert mode_entropy(np.array([0, 1] * 25)) == pytest.approx(1.0)
    assert mode_entropy(np.zeros(50, int)) == 0.0
    assert mode_entropy(np.array([0, 0, 0, 1, -1, -1])) == pytest.approx(0.8112781, abs=1e-6)  # -1 ignored
    assert np.isnan(mode_entropy(np.full(5, -1)))


def _coin(obs, noise):
    up, down = _around_policy(+1)(obs, noise), _around_policy(-1)(obs, noise)
    return np.where((noise[:, 0, 0] > 0)[:, None, None], up, down)


def test_mode_coverage_one_mode_coin_and_per_start_commitment():
    one = mode_coverage(_around_policy(+1), seed=0)
    assert one["coverage_covered"] == 0 and one["coverage_starts"] == 20 and one["coverage_entropy_bits"] == 0.0
    coin = mode_coverage(_coin, seed=0)
    assert coin["coverage_covered"] == 20 and coin["coverage_entropy_bits"] > 0.9
    # A deterministic policy whose side depends on the start (what a regression policy does):
    # both modes overall, yet no start is covered.
    def by_start(obs, noise):
        side = obs[:, 1] > 0  # the start's y offset
        return np.where(side[:, None, None], _around_policy(+1)(obs, noise), _around_policy(-1)(obs, noise))

    overall = rollout_metrics(rollout(by_start, n=100, seed=0))
    assert overall["both_modes"] and overall["success_rate"] == 1.0
    assert mode_coverage(by_start, seed=0)["coverage_covered"] == 0
    with pytest.raises(ValueError, match="min_fraction"):
        mode_coverage(_coin, min_fraction=0.6)


def test_clearance_and_path_length_of_a_straight_path():
    starts, goals = np.array([[-0.7, 0.6], [-0.7, -0.45]]), np.array([[0.7, 0.6], [0.7, -0.45]])
    straight = rollout(lambda o, e: np.tile([0.8, 0.0], (len(o), reach.CHUNK, 1)), starts=starts, goals=goals)
    assert straight.success.all()
    stats = path_stats(straight)
    # Closest approach at x = 0: |y| - radius; 34 steps of 0.04 reach within 0.05 of the goal.
    assert stats["clearance_min"] == pytest.approx(0.45 - 0.25)
    assert stats["clearance_median"] == pytest.approx((0.35 + 0.2) / 2)
    assert stats["path_length_median"] == pytest.approx(34 * 0.04)
    assert stats["mode_entropy_bits"] == pytest.approx(1.0)
    none = path_stats(rollout(lambda o, e: np.zeros((len(o), reach.CHUNK, 2)), n=3, max_steps=5))
    assert np.isnan(none["clearance_median"]) and np.isnan(none["path_length_median"])


def test_expert_policy_matches_its_demonstrations():
    result = rollout(ExpertPolicy(0), n=100, seed=0)
    m = rollout_metrics(result)
    assert m["success_rate"] == 1.0 and 35 <= m["success_above"] <= 65
    assert 40 <= m["mean_steps_success"] <= 59  # the demonstrations take 40 to 59 steps
    stats = path_stats(result)
    assert 0.17 < stats["clearance_median"] < 0.35
    assert mode_coverage(ExpertPolicy(0), seed=0)["coverage_covered"] == 20
    policy = ExpertPolicy(0)
    policy(np.zeros((4, 4), np.float32), np.ones((4, reach.CHUNK, 2)))
    with pytest.raises(ValueError, match="drives 4 rollouts"):
        policy(np.zeros((3, 4), np.float32), np.ones((3, reach.CHUNK, 2)))
