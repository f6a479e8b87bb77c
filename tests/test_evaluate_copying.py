"""Copying and novelty (`meanflow_common.evaluate.copying`) on cases with a known answer,
the digits' copying figures on copiers, near copies and held-out digits (the null), and
injected-bug controls: each planted bug must change what a test here checks."""
import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from meanflow_common.tasks import get_dataset
from meanflow_common.evaluate import DIGIT_BASELINES, evaluate_digits, score_digits
from meanflow_common.evaluate import digits_eval
from meanflow_common.evaluate.copying import (
    CopyTest,
    distinct_count,
    mann_whitney_z,
    near_copy_radius,
    nearest_distances,
)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def _flat(x):
    return np.asarray(x, np.float64).reshape(len(x), -1)


def test_nearest_distances_hand_computed():
    ref = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.array([[0.0, 0.0], [3.0, 4.0], [9.0, 0.0], [6.0, 7.0]])
    d, idx = nearest_distances(x, ref, block=3)  # two blocks
    np.testing.assert_allclose(d, [0.0, 5.0, 1.0, np.sqrt(45.0)])
    np.testing.assert_array_equal(idx, [0, 0, 1, 2])
    assert d[0] == 0.0  # an exact copy is exactly 0 (recomputed, not the expansion's residue)
    with pytest.raises(ValueError, match="same D"):
        nearest_distances(x, ref[:, :1])


def test_near_copy_radius_and_distinct_count():
    assert near_copy_radius(np.array([[0.0], [1.0], [1.0], [3.0]])) == 1.0  # the duplicate skipped
    assert near_copy_radius(np.array([[0.0], [0.5], [3.0]])) == 0.5
    assert distinct_count(np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])) == 2
    assert distinct_count(np.zeros((5, 8, 8, 1))) == 1


def test_mann_whitney_z_hand_computed_and_against_scipy():
    # U = 0 (every generated distance below every held-out one): Z = (0 - 3) / sqrt(6 * 6 / 12)
    assert mann_whitney_z([0.0, 0.0], [1.0, 2.0, 3.0]) == pytest.approx(-3 / np.sqrt(3))
    # one tie: U = 1/2, Z = (1/2 - 1) / sqrt(2 * 4 / 12)
    assert mann_whitney_z([1.0], [1.0, 2.0]) == pytest.approx(-0.5 / np.sqrt(8 / 12))
    rng = np.random.default_rng(0)
    g, r = rng.random(40), rng.random(30) + 0.1
    u = mannwhitneyu(g, r).statistic  # scipy's U of the first sample: the same count
    assert mann_whitney_z(g, r) == pytest.approx((u - 40 * 30 / 2) / np.sqrt(40 * 30 * 71 / 12))


def test_copy_test_cells_weights_and_minimum_count():
    rng = np.random.default_rng(1)
    # Two far-apart clusters in 1-D: k-means with two cells splits them exactly.
    train = np.r_[rng.normal(0, 1, 200), rng.normal(100, 1, 200)][:, None]
    held = np.r_[rng.normal(0, 1, 30), rng.normal(100, 1, 10)][:, None]
    gen = np.r_[rng.normal(0, 1, 50), train[200:220, 0]][:, None]  # fresh near 0, copies near 100
    test = CopyTest.fit(train, held, n_cells=2, min_count=10)
    out = test.test(gen)
    d = lambda x: nearest_distances(x, train)[0]  # noqa: E731
    z0, z1 = mann_whitney_z(d(gen[:50]), d(held[:30])), mann_whitney_z(d(gen[50:]), d(held[30:]))
    assert sorted(out["cell_z"]) == pytest.approx(sorted([z0, z1]))
    assert out["z"] == pytest.approx(0.75 * z0 + 0.25 * z1) and out["cells"] == 2  # weights: held-out shares
    assert z1 < -3 < z0  # the copied cell alone is far below 0
    # A cell with fewer than min_count generated points is left out.
    few = test.test(gen[:59])  # 9 points in the copied cell
    assert few["cells"] == 1 and few["z"] == pytest.approx(z0) and np.isnan(few["cell_z"]).sum() == 1
    untested = CopyTest.fit(train, held, n_cells=2, min_count=100).test(gen)
    assert np.isnan(untested["z"]) and untested["copying"] is None and untested["cells"] == 0


def test_copier_fails_held_out_passes(digits):
    copier = evaluate_digits(DIGIT_BASELINES["copier (training, with replacement)"](0))
    assert copier["exact_copy_fraction"] == 1.0 and copier["nn_train_px_median"] == 0.0
    assert copier["copy_z"] < -10 and copier["copying"] and copier["distinct"] < 1000
    # ... while its FD / recall are real-digit level: what the copying figures are for.
    assert copier["fd"] < 3 and copier["recall"] > 0.8
    # Per sample: a training digit is at 0 from itself; a held-out digit's distance by brute force.
    from meanflow_common.evaluate import get_classifier, train_distances

    x = digits.test["x"][:3].astype(np.float64)
    d_px, d_feat = train_distances(x, get_classifier().features(x))
    brute = np.sqrt(((_flat(x)[:, None] - _flat(digits.train["x"])[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(d_px, brute, rtol=1e-12)
    assert d_feat.shape == (3,) and (d_feat > 0).all()
    held = score_digits(digits.test["x"].astype(np.float64), digits.test["y"])
    assert held["exact_copy_fraction"] == 0.0 and held["near_copy_fraction"] == 0.0 and not held["copying"]
    assert held["nn_train_px_median"] == held["nn_train_px_held_out"]
    assert held["distinct"] == held["n"] == 359


def test_null_held_out_halves_not_flagged(digits):
    """The null itself: one half of the held-out digits tested against the other half."""
    train, test = _flat(digits.train["x"]), _flat(digits.test["x"])
    zs = []
    for s in range(10):
        perm = np.random.default_rng(s).permutation(len(test))
        out = CopyTest.fit(train, test[perm[:180]]).test(test[perm[180:]])
        assert out["cells"] == 5 and not out["copying"]
        zs.append(out["z"])
    assert max(abs(z) for z in zs) < 2.0  # sd under the null sqrt(sum w^2) / sum w ~ 1/sqrt(5)


def test_near_copy_flagged(digits):
    rng = np.random.default_rng(3)
    idx = rng.integers(len(digits.train["x"]), size=500)
    x = digits.train["x"][idx].astype(np.float64)
    near = np.clip(x + 0.01 * rng.standard_normal(x.shape), -1, 1)
    out = score_digits(near, digits.train["y"][idx])
    assert out["exact_copy_fraction"] == 0.0 and out["near_copy_fraction"] == 1.0
    assert out["copying"] and out["distinct"] == 500
    assert out["near_copy_radius"] == pytest.approx(0.6614378, abs=1e-6)  # measured on this split


def test_planted_bug_distances_to_held_out_instead_of_train(digits, monkeypatch):
    """Control: measuring against the held-out set (where FD / recall look) must be caught by
    the copier test above: the copier's samples are then no copies at all."""
    good = score_digits(digits.train["x"][:300].astype(np.float64), digits.train["y"][:300])
    assert good["exact_copy_fraction"] == 1.0 and good["copying"]
    ref = digits_eval._copy_reference()
    test_px = _flat(digits.test["x"])
    feats = digits_eval._held_out_stats()[2]
    buggy = (test_px, feats, ref[2], ref[3], ref[4], CopyTest.fit(test_px, test_px), CopyTest.fit(feats, feats))
    monkeypatch.setattr(digits_eval, "_copy_reference", lambda: buggy)
    bad = score_digits(digits.train["x"][:300].astype(np.float64), digits.train["y"][:300])
    assert bad["exact_copy_fraction"] == 0.0 and bad["nn_train_px_median"] > 1.0  # the checks above fail


def test_planted_bug_sign_of_u_flips_the_verdict(digits, monkeypatch):
    """Control: counting d(Q) < d(P) instead of d(Q) > d(P) makes the copier pass."""
    from meanflow_common.evaluate import copying

    monkeypatch.setattr(copying, "mann_whitney_z", lambda g, r: -mann_whitney_z(g, r))
    out = copying.CopyTest.fit(_flat(digits.train["x"]), _flat(digits.test["x"])).test(_flat(digits.train["x"][:500]))
    assert not out["copying"] and out["z"] > 3


def test_too_few_samples_is_untested_not_a_pass():
    from meanflow_common.evaluate import DIGIT_BASELINES, evaluate_digits
    from meanflow_common.evaluate.table import format_table

    rec = evaluate_digits(DIGIT_BASELINES["copier (training, with replacement)"](0), n_per_class=2)
    assert rec["copying"] is None and np.isnan(rec["copy_z"]) and rec["exact_copy_fraction"] == 1.0
    table = format_table([{**rec, "task": "digits", "baseline": "copier"}]).splitlines()
    row = next(line for line in table if line.startswith("| baseline"))
    assert row.endswith("| nan | untested |")
