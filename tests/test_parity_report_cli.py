"""What a failing `python -m parity` says beyond the table (the worst quantity, the blame or
the debug command that gives it, what a failing extra check means), its exit statuses, the
plugin's exception, and the weight files it refuses or names.

Tiny networks in float64, --checks none and --trained-steps 0 unless a check is the subject.
"""
import dataclasses
import shlex

import numpy as np
import pytest

import parity
from examples.conv_velocity import BROKEN
from examples.groupnorm_film import ARCH as GN
from parity.cli import main
from parity.convert import checkpoints
from parity.core.compare import CheckResult
from parity.suite import report as report_mod
from parity.suite.report import ParityReport

FAST = ["--dtype", "float64", "--checks", "none", "--trained-steps", "0"]
GN_SPEC = "examples.groupnorm_film:ARCH"


def test_a_failing_check_prints_the_blame_and_the_debug_command(capsys, monkeypatch):
    assert main(["--arch", "examples.conv_velocity:BROKEN", "--variant", "no cfg", *FAST]) == 1
    out = capsys.readouterr().out
    assert "conv_velocity_broken / no cfg / float64 / cpu: failing u, du_dt" in out and "worst grad" in out
    assert "blamed: blocks.1 " in out, out[-2000:]
    (cmd,) = [line.strip()[len("debug: "):] for line in out.splitlines() if line.strip().startswith("debug: ")]
    assert cmd == ("python -m parity debug --arch examples.conv_velocity:BROKEN --variant 'no cfg' --dtype float64 "
                   "--device cpu --seed 0 --batch 6")
    # a network over the blame budget: no blame, the command alone (with the run's seed and batch)
    monkeypatch.setattr(report_mod, "BLAME_BUDGET", 0)
    rows = [CheckResult(BROKEN.name, "no cfg", "float64", "cpu", "u", 1.0, 0.5, 1e-12, False)]
    msg = ParityReport(rows, BROKEN.default_variants(), seed=2, batch=4).failure_message(blame="auto")
    assert "blamed:" not in msg and "--variant 'no cfg' --dtype float64 --device cpu --seed 2 --batch 4" in msg
    # the printed command reproduces the run and blames the module
    assert main(shlex.split(cmd)[3:] + ["--out", "/tmp/parity-debug-cmd"]) == 1
    assert "blamed: blocks.1" in capsys.readouterr().out


def test_branch_coverage_alone_has_its_own_exit_status(capsys):
    """Batch 1 cannot reach both r = t and r < t: every objective check passes, coverage fails."""
    code = main(["--arch", GN_SPEC, "--variant", "no cfg", "--dtype", "float64", "--checks", "branches",
                 "--trained-steps", "0", "--batch", "1"])
    out = capsys.readouterr().out
    assert code == 3, out[-1500:]
    assert "branch coverage only: every objective comparison passed" in out
    assert "coverage only: the inputs of batch 1, seed 0 reach no sample of r = t" in out and "--batch" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "3 only the branch coverage failed" in capsys.readouterr().out


def test_the_dropout_rows_say_which_side_applies_dropout_at_eval():
    rows = [CheckResult("flower", "p>0 eval torch", "float64", "cpu", q, 1.0, 0.5, 1e-12, False) for q in ("u", "loss")]
    rows.append(CheckResult("flower", "p>0 eval jax", "float64", "cpu", "u", 0.0, 0.0, 1e-12, True))
    msg = ParityReport(rows, []).failure_message()
    assert "flower / p>0 eval torch / float64 / cpu: failing u, loss" in msg
    assert "the port (torch) applies dropout at train=False" in msg and "module.training" in msg
    assert "blame" not in msg  # the debugger's default variants have dropout off: not run


def test_guidance_without_a_null_label_names_the_field_and_variant():
    unlabelled = dataclasses.replace(GN, name="unlabelled", null_label=None)
    with pytest.raises(ValueError) as err:
        unlabelled.default_variants()
    msg = str(err.value)
    assert "variant 'cfg' of unlabelled" in msg and "guidance_eq='cfg'" in msg
    assert "null_label=lambda model_cfg" in msg and "Arch.variants" in msg


def _nan_weights(tmp_path):
    from parity.core.harness import random_params

    v = GN.default_variants()[0]
    params = random_params(GN, v, seed=1)
    params["conv_in"]["kernel"][0, 0, 0, 0] = np.nan
    src = tmp_path / "nan_ckpt"
    checkpoints.save_orbax(params, str(src))
    return src


def test_non_finite_weights_are_refused_at_load_or_written_with_a_warning(tmp_path, capsys):
    src = _nan_weights(tmp_path)
    dst = tmp_path / "m.safetensors"
    assert main(["convert", str(src), str(dst), "--arch", GN_SPEC]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights in 1 parameter(s): conv_in/kernel (1 nan of 72)" in err and "--allow-nonfinite" in err
    assert not dst.exists()
    assert main(["--arch", GN_SPEC, *FAST, "--checkpoint", str(src)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {src}: non-finite weights" in err and "Traceback" not in err
    assert main(["convert", str(src), str(dst), "--arch", GN_SPEC, "--allow-nonfinite"]) == 0
    assert "warning: wrote non-finite weights (--allow-nonfinite): conv_in/kernel" in capsys.readouterr().err
    assert np.isnan(checkpoints.read_torch_file(str(dst))["conv_in.weight"]).sum() == 1


def test_convert_refuses_an_unknown_suffix_and_the_report_names_its_weights(tmp_path, capsys):
    from parity.core.harness import random_params

    src = tmp_path / "ckpt"
    checkpoints.save_orbax(random_params(GN, GN.default_variants()[0], seed=1), str(src))
    assert main(["convert", str(src), str(tmp_path / "conv.npz"), "--arch", GN_SPEC]) == 2
    assert "unknown suffix '.npz'" in capsys.readouterr().err and not (tmp_path / "conv.npz").exists()
    assert main(["convert", str(src), str(tmp_path / "back"), "--arch", GN_SPEC]) == 0
    assert 'orbax checkpoint {"params": tree}' in capsys.readouterr().out
    assert main(["--arch", GN_SPEC, *FAST, "--checkpoint", str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert f"weights: {tmp_path / 'back'}, for every variant" in out and f"; weights {tmp_path / 'back'}" in out
