"""Evaluation: the fixed classifier, the Fréchet distance, digit scores, reach rollouts."""
import numpy as np
import pytest

from meanflow_common.data import reach

from meanflow_common.tasks import get_dataset
from meanflow_common.evaluate import (
    evaluate_digits,
    frechet_distance,
    frechet_from_stats,
    get_classifier,
    rollout,
    rollout_metrics,
    score_digits,
)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def _real_generator(digits, shift_label=0):
    """A 'generator' returning held-out digits of class (label + shift_label) % 10."""
    rng = np.random.default_rng(0)
    pools = {c: digits.test["x"][digits.test["y"] == c] for c in range(10)}

    def gen(noise, labels):
        return np.stack([pools[(c + shift_label) % 10][rng.integers(len(pools[(c + shift_label) % 10]))]
                         for c in labels])

    return gen


def test_classifier_is_accurate_and_fixed():
    clf = get_classifier()
    assert clf.held_out_accuracy > 0.95
    feats = clf.features(np.zeros((3, 8, 8, 1)))
    assert feats.shape == (3, 64) and (feats >= 0).all()
    with pytest.raises(ValueError, match="NCHW"):
        clf.predict(np.zeros((3, 1, 8, 8)))


def test_frechet_distance_zero_for_identical_and_grows_with_shift():
    f = np.random.default_rng(0).standard_normal((500, 8))
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    d = [frechet_distance(f, f + s) for s in (0.1, 0.5, 1.0)]
    assert d[0] < d[1] < d[2]
    assert d[2] == pytest.approx(8.0, rel=1e-9)  # |mu shift|^2 = 8 * 1^2, same covariance
    # Closed form in 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_from_stats([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + 1.0)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(f, f[:, :3])


def test_real_digits_score_high_noise_scores_low(digits):
    good = evaluate_digits(_real_generator(digits), n_per_class=30)
    assert good["accuracy"] > 0.9
    assert good["fd"] < 3 * good["fd_real"] + 1.0
    noise = evaluate_digits(lambda e, y: e, n_per_class=30)
    assert noise["accuracy"] < 0.3
    assert noise["fd"] > 20 * good["fd"]
    # Real digits of the WRONG class: realistic features (low FD), low accuracy.
    wrong = evaluate_digits(_real_generator(digits, shift_label=1), n_per_class=30)
    assert wrong["accuracy"] < 0.1 and wrong["fd"] < noise["fd"] / 10


def test_score_digits_checks_layout_and_clips():
    labels = np.zeros(20, np.int64)
    with pytest.raises(ValueError, match="NHWC"):
        score_digits(np.zeros((20, 8, 8)), labels)
    with pytest.raises(ValueError, match="labels"):
        score_digits(np.zeros((20, 8, 8, 1)), labels[:5])
    out = score_digits(np.full((20, 8, 8, 1), 3.0), labels)
    assert out["out_of_range"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        evaluate_digits(lambda e, y: e[..., 0], n_per_class=2)


def _around_policy(side):
    """A scripted stateless policy: via (-0.35, side 0.5), (0.35, side 0.5), then the goal."""

    def policy(obs, noise):
        pos, goal = obs[:, :2].astype(np.float64), obs[:, 2:].astype(np.float64)
        out = np.zeros((len(obs), reach.CHUNK, 2))
        for k in range(reach.CHUNK):
            y_ok = side * pos[:, 1] > 0.45
            target = np.where((pos[:, 0] < -0.35)[:, None] & ~y_ok[:, None], [[-0.35, side * 0.5]],
                              np.where((pos[:, 0] < 0.35)[:, None], [[0.35, side * 0.5]], goal))
            d = target - pos
            n = np.linalg.norm(d, axis=-1, keepdims=True)
            a = d / np.maximum(n, 1e-9) * np.minimum(n, 0.04) / reach.MAX_STEP
            out[:, k] = a
            pos = pos + a * reach.MAX_STEP
        return out

    return policy


def test_rollout_detects_success_collision_and_timeout():
    n = 40
    above = rollout_metrics(rollout(_around_policy(+1), n=n, seed=1))
    assert above["success_rate"] == 1.0 and above["success_above"] == n and above["success_below"] == 0
    below = rollout_metrics(rollout(_around_policy(-1), n=n, seed=1))
    assert below["success_rate"] == 1.0 and below["success_below"] == n
    still = rollout(lambda o, e: np.zeros((len(o), reach.CHUNK, 2)), n=n, seed=1, max_steps=30)
    assert still.timeout.all() and not still.success.any() and not still.collided.any()
    # Straight right from the middle of the start box: into the obstacle.
    starts = np.array([[-0.7, 0.0], [-0.7, 0.1]])
    goals = np.array([[0.7, 0.0], [0.7, 0.1]])
    straight = rollout(lambda o, e: np.tile([1.0, 0.0], (len(o), reach.CHUNK, 1)), starts=starts, goals=goals)
    assert straight.collided.all() and not straight.success.any()
    assert (np.linalg.norm(straight.paths[:, -1], axis=-1) < reach.OBSTACLE_RADIUS + 0.05).all()


def test_rollout_is_deterministic_and_mixes_modes():
    def coin(obs, noise):  # chooses its side from the rollout noise: both modes
        side = np.where(noise[:, 0, 0] > 0, 1, -1)
        up, down = _around_policy(+1)(obs, noise), _around_policy(-1)(obs, noise)
        return np.where((side > 0)[:, None, None], up, down)

    a, b = rollout(coin, n=30, seed=4, execute=5), rollout(coin, n=30, seed=4, execute=5)
    np.testing.assert_array_equal(a.paths, b.paths)
    m = rollout_metrics(a)
    assert m["both_modes"] and m["n"] == 30
    with pytest.raises(ValueError, match="shape"):
        rollout(lambda o, e: np.zeros((len(o), 3, 2)), n=2)
    with pytest.raises(ValueError, match="execute"):
        rollout(coin, n=2, execute=0)


class _FakeRun:
    """A stand-in for a trainer's LoadedRun: digits from the held-out set, or a scripted policy."""

    def __init__(self, task, method, sample):
        from meanflow_common.train_config import TrainConfig

        self.cfg = TrainConfig(task=task, method=method, out_dir="unused")
        self.step, self.sample = 7, sample


def test_evaluate_cli_records_table_and_errors(tmp_path, digits, capsys):
    from meanflow_common.evaluate import cli

    gen = _real_generator(digits)
    runs = {
        str(tmp_path / "d"): _FakeRun("digits", "meanflow", lambda y, noise=None, num_steps=1: gen(noise, y)),
        str(tmp_path / "r"): _FakeRun("reach", "flow_matching",
                                      lambda o, noise=None, num_steps=1: _around_policy(1)(o, noise)),
    }

    def load_run(run_dir, checkpoint=None, use_ema=True):
        if run_dir not in runs:
            raise FileNotFoundError(f"{run_dir} has no checkpoint")
        return runs[run_dir]

    out_json = tmp_path / "eval.json"
    argv = ["--run", *runs, "--n-per-class", "10", "--rollouts", "8", "--json", str(out_json)]
    assert cli.run_eval_cli(load_run, "fake", argv) == 0
    table = capsys.readouterr().out
    assert "| accuracy |" in table and "| success |" in table
    import json

    records = json.loads(out_json.read_text())
    runs_out = [r for r in records if r["method"] != "baseline"]
    assert [(r["task"], r["num_steps"]) for r in runs_out] == [("digits", 1), ("digits", 2), ("reach", 1), ("reach", 4)]
    assert runs_out[0]["accuracy"] > 0.8 and runs_out[2]["success_rate"] == 1.0
    # The anchors follow the runs, scored on the same inputs, with the new metrics.
    anchors = [(r["task"], r["baseline"]) for r in records if r["method"] == "baseline"]
    assert anchors == [("digits", "class mean"), ("digits", "class mean + noise"),
                       ("digits", "real training digits"), ("digits", "copier (training, with replacement)"),
                       ("digits", "shrunk to class mean"), ("digits", "mode collapse (2 per class)"),
                       ("reach", "expert")]
    by = {r["baseline"]: r for r in records if r["method"] == "baseline"}
    # The copying figures: the copier fails the copying test, the run (held-out digits) passes.
    assert by["copier (training, with replacement)"]["copying"] and not runs_out[0]["copying"]
    assert runs_out[0]["exact_copy_fraction"] == 0.0 and by["mode collapse (2 per class)"]["distinct"] == 20
    assert "| copying |" in table and "Z_U: data-copying test" in table
    assert by["real training digits"]["recall"] > by["class mean + noise"]["recall"] > by["class mean"]["recall"]
    assert runs_out[0]["pr_k"] == 3 and runs_out[0]["pr_reference"].startswith("held-out digits")
    for key in ("precision", "recall", "diversity_ratio"):
        assert 0.0 <= runs_out[0][key] <= 1.5, key
    scripted = runs_out[2]  # one side only: no start covered, zero entropy
    assert scripted["coverage_covered"] == 0 and scripted["coverage_starts"] == 20
    assert scripted["mode_entropy_bits"] == 0.0 and by["expert"]["coverage_covered"] == 20
    assert scripted["clearance_vs_expert"] == pytest.approx(scripted["clearance_median"] / by["expert"]["clearance_median"])
    assert "baseline: class mean" in table and "| starts covered |" in table and "| recall |" in table
    assert cli.run_eval_cli(load_run, "fake", ["--run", *runs, "--n-per-class", "10", "--rollouts", "8",
                                               "--no-anchors", "--no-plots", "--json", str(out_json)]) == 0
    capsys.readouterr()
    assert all(r["method"] != "baseline" for r in json.loads(out_json.read_text()))
    assert (tmp_path / "d" / "eval_1nfe.png").exists() and (tmp_path / "r" / "eval_4nfe.png").exists()
    assert cli.run_eval_cli(load_run, "fake", ["--run", str(tmp_path / "missing")]) == 1
    assert "has no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run_eval_cli(load_run, "fake", ["--run", *runs, "--checkpoint", "x"])
    with pytest.raises(SystemExit):
        cli.run_eval_cli(load_run, "fake", ["--run", *runs, "--n-per-class", "1"])
    assert "--n-per-class must be >= 2" in capsys.readouterr().err


def test_first_chunk_separates_committing_from_averaging():
    from meanflow_common.evaluate import chunk_sides, first_chunk_modes

    data = get_dataset("reach").train
    first = np.r_[True, np.diff(data["demo"]) != 0]  # the chunk at step 0 of each demo
    sides = chunk_sides(data["actions"][first])
    np.testing.assert_array_equal(sides, data["mode"][first])  # every expert chunk commits to its side
    up, down = _around_policy(+1), _around_policy(-1)
    mean = first_chunk_modes(lambda o, e: (up(o, e) + down(o, e)) / 2, n=40)
    assert mean["first_chunk_between"] == 1.0
    coin = first_chunk_modes(lambda o, e: np.where((e[:, 0, 0] > 0)[:, None, None], up(o, e), down(o, e)), n=40)
    assert coin["first_chunk_between"] == 0.0 and 0.2 < coin["first_chunk_above"] < 0.8
