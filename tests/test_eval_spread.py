"""The training-seed spreads of `meanflow_common.evaluate.spread` from evaluator records."""
import json

import numpy as np
import pytest

from meanflow_common.evaluate import spread


def _rec(run, nfe, fd, recall):
    return {"run": run, "task": "digits", "num_steps": nfe, "fd": fd, "recall": recall}


def test_runs_are_averaged_over_eval_seeds_then_spread_over_training_seeds(tmp_path, capsys):
    # training seed s, eval seed e: fd = 10 + s + 0.1 e, so the per-seed means are 10.1, 11.1, 12.1
    recs = [_rec(f"runs/a_s{s}", 1, 10 + s + 0.1 * e, 0.5) for s in range(3) for e in range(3)]
    recs += [_rec("runs/a_s0", 2, 7.0, 0.25), _rec("runs/b", 1, 3.0, 0.75), _rec("runs/b", 1, 5.0, 0.25)]
    means = spread.seed_means(recs, ["fd"])
    assert sorted(means) == [("runs/a", 1), ("runs/a", 2), ("runs/b", 1)]
    np.testing.assert_allclose([np.mean(v["fd"]) for v in means[("runs/a", 1)].values()], [10.1, 11.1, 12.1])
    rows = spread.spread_rows(recs, ["fd", "recall"])
    assert rows[0] == "| runs/a | 1 | 3 training x 3 eval | 11.10 ± 1.000 (10.10, 11.10, 12.10) | " \
                      "0.500 ± 0.000 (0.500, 0.500, 0.500) |"
    assert rows[1] == "| runs/a | 2 | 1 training x 1 eval | 7.000 | 0.250 |"
    assert rows[2] == f"| runs/b | 1 | 1 training x 2 eval | 4.000 ± {np.sqrt(2):.3f} (eval seeds) | " \
                      f"0.500 ± {np.std([0.75, 0.25], ddof=1):.3f} (eval seeds) |"
    path = tmp_path / "e.json"
    path.write_text(json.dumps(recs))
    assert spread.main([str(path), "--metrics", "fd"]) == 0
    assert "| runs/a | 1 | 3 training x 3 eval | 11.10 ± 1.000" in capsys.readouterr().out


def test_a_missing_metric_names_the_run_and_the_metric():
    with pytest.raises(KeyError, match=r"runs/a_s0.*'coverage_covered'"):
        spread.seed_means([_rec("runs/a_s0", 1, 1.0, 0.5)], ["coverage_covered"])


def test_recipe_strips_only_a_trailing_seed_suffix():
    assert spread.recipe_of("runs/x_s12/") == ("runs/x", 12)
    assert spread.recipe_of("runs/x_s1y") == ("runs/x_s1y", None)
