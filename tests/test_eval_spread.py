"""The training-seed spreads of `meanflow_common.evaluate.spread` from evaluator records."""
import json

import numpy as np
import pytest

from meanflow_common.evaluate import spread
from meanflow_common.tasks import get_task


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


def _anchor(name, fd, recall):
    """An anchor record as the evaluator writes it: no run folder, no NFE."""
    return {"run": None, "backend": None, "task": "digits", "method": "baseline", "baseline": name,
            "num_steps": None, "fd": fd, "recall": recall}


def test_evaluator_json_with_anchors(tmp_path, capsys):
    # The evaluator's default writes its anchors (run None, num_steps None) after the runs,
    # and a reach anchor when reach runs were evaluated too.
    files = []
    for e in range(2):
        recs = [_rec("runs/a_s0", 1, 3.0 + e, 0.5), _anchor("class mean", 21.8, 0.0),
                _anchor("copier", 1.9 + 0.2 * e, 0.875)]
        files.append(tmp_path / f"e{e}.json")
        files[-1].write_text(json.dumps(recs))
    assert spread.main([str(f) for f in files] + ["--metrics", "fd", "recall"]) == 0
    out = capsys.readouterr().out
    assert "| runs/a | 1 | 1 training x 2 eval | 3.500 ± 0.707 (eval seeds) |" in out
    assert "| baseline: class mean | - | 2 eval | 21.80 ± 0.000 (eval seeds) |" in out
    assert out.index("runs/a") < out.index("class mean") < out.index("copier")  # runs, then anchors as given
    assert f"| baseline: copier | - | 2 eval | 2.000 ± {np.std([1.9, 2.1], ddof=1):.3f} (eval seeds) |" in out


def test_mixed_tasks_print_one_table_each(tmp_path, capsys):
    recs = [_rec("runs/a_s0", 1, 3.0, 0.5),
            {"run": None, "task": "reach", "baseline": "expert", "num_steps": None,
             **{m: 0.5 for m in get_task("reach").summary_metrics}}]
    for m in get_task("digits").summary_metrics:
        recs[0].setdefault(m, 0.25)
    path = tmp_path / "e.json"
    path.write_text(json.dumps(recs))
    assert spread.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "| runs/a | 1 |" in out and "| baseline: expert | - |" in out
    assert "copy_z" in out and "success_rate" in out


@pytest.mark.parametrize("content, message", [
    (None, "no such --json file"),
    ("{not json", "not JSON"),
    ('{"a": 1}', "expected the evaluator's list of records"),
    ('[{"run": "runs/a", "task": "digits", "num_steps": 1}]', "has no metric"),
])
def test_bad_input_is_a_clear_error_with_status_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    assert spread.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err


def test_command_line_bad_file_exits_2_without_traceback(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text("not json at all")
    proc = subprocess.run([sys.executable, "-m", "meanflow_common.evaluate.spread", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_files_before_the_copying_figures_still_print(tmp_path, capsys):
    rec = {"run": "runs/a", "task": "digits", "num_steps": 1, "accuracy": 1.0, "fd": 3.0, "precision": 0.9,
           "recall": 0.7, "diversity_ratio": 0.8}
    path = tmp_path / "old.json"
    path.write_text(json.dumps([rec]))
    assert spread.main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert "| runs/a | 1 | 1 training x 1 eval | 1.000 | 3.000 | 0.900 | 0.700 | 0.800 |" in out
    assert "copy_z" not in out and "copy_z" in err and "left out" in err


def test_sampling_settings_are_rows_of_their_own():
    recs = [{**_rec(f"runs/imf_s{s}", 1, 5.0 + w, 0.5), "sampling": {"omega": w, "t_min": 0.4}}
            for s in range(2) for w in (1.0, 2.0)]
    rows = spread.spread_rows(recs, ["fd"])
    assert rows == ["| runs/imf (omega=1 t_min=0.4) | 1 | 2 training x 1 eval | 6.000 ± 0.000 (6.000, 6.000) |",
                    "| runs/imf (omega=2 t_min=0.4) | 1 | 2 training x 1 eval | 7.000 ± 0.000 (7.000, 7.000) |"]
