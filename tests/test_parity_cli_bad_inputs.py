"""Every `python -m parity` subcommand refuses bad input with exit status 2 and one "error:"
line naming it, no traceback, before any compile. In-process where the command sets no
process-wide state; the benchmark-like commands (they set threads and XLA flags) in a child."""
import os
import subprocess
import sys

import pytest

from parity.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GN = "examples.groupnorm_film:ARCH"

IN_PROCESS = [
    (["--arch", "nope"], "unknown architecture 'nope'"),
    (["--arch", GN, "--preset", "NOPE"], "preset 'NOPE'"),
    (["--arch", GN, "--variant", "nonexistent"], "nonexistent"),
    (["--arch", GN, "--set", "nope=1"], "unknown field 'nope'"),
    (["--arch", GN, "--set", "hidden=abc"], "hidden"),
    (["--arch", GN, "--set", "hidden"], "field=value"),
    (["--arch", GN, "--dtype", "float16"], "--dtype 'float16'"),
    (["--arch", GN, "--device", "tpu"], "--device 'tpu'"),
    (["--arch", GN, "--batch", "0"], "--batch"),
    (["--arch", GN, "--seed", "-1"], "--seed"),
    (["--arch", GN, "--checks", "nope"], "nope"),
    (["--arch", GN, "--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["--arch", "dit", "--preset", "tiny", "--checkpoint", "{GN_CKPT}", "--dtype", "float64"], "{GN_CKPT}"),
    (["convert", "/nonexistent/ckpt", "x.pt", "--arch", GN], "/nonexistent/ckpt"),
    (["convert", "{GN_CKPT}", "x.npz", "--arch", GN], "unknown suffix '.npz'"),
    (["convert", "{GN_CKPT}", "{BAD_FILE}", "--arch", GN], "{BAD_FILE}"),
    (["convert", "{BAD_FILE}", "x.pt", "--arch", GN], "{BAD_FILE}"),
    (["debug", "--arch", "nope"], "unknown architecture 'nope'"),
    (["debug", "--arch", GN, "--variant", "zzz"], "--variant 'zzz'"),
    (["debug", "--arch", GN, "--dtype", "float16"], "float16"),
    (["debug", "--arch", GN, "--control", "nope"], "nope"),
    (["debug", "--arch", GN, "--checkpoint", "/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["bench-report", "{BAD_FILE}"], "{BAD_FILE} is not a JSON benchmark report"),
    (["bench-report", "/nonexistent/b.json"], "/nonexistent/b.json"),
    (["bench-report"], "usage: python -m parity bench-report"),
    (["rule-sizes", "--sizes", "dit:NOPE"], "preset 'NOPE'"),
    (["rule-sizes", "--sizes", "nope:tiny"], "unknown architecture 'nope'"),
    (["rule-sizes", "--combine", "{BAD_FILE}"], "{BAD_FILE}"),
    (["rule-sizes", "--batch", "0"], "--batch"),
]

CHILD = [
    (["bench", "--sizes", "nope"], "unknown size 'nope'"),
    (["bench-profile", "--steps", "0"], "--steps"),
    (["parity-cost", "--arch", "nope"], "unknown architecture 'nope'"),
    (["train-parity", "--steps", "0"], "--steps"),
    (["gpu-check", "--nope"], "--nope"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from examples.groupnorm_film import ARCH
    from parity.convert import checkpoints
    from parity.core.harness import random_params

    d = tmp_path_factory.mktemp("bad")
    ckpt = d / "gn_ckpt"
    checkpoints.save_orbax(random_params(ARCH, ARCH.default_variants()[0], seed=0), str(ckpt))
    bad = d / "garbage.pt"
    bad.write_text("not a checkpoint, not JSON")
    return {"GN_CKPT": str(ckpt), "BAD_FILE": str(bad)}


def _fill(words, files):
    return [w.format(**files) for w in words]


def _one_error_line(err: str, subject: str):
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and subject in lines[0], err[-2000:]


@pytest.mark.parametrize("argv, subject", IN_PROCESS, ids=[" ".join(a) for a, _ in IN_PROCESS])
def test_bad_input_exits_2_with_one_line(argv, subject, files, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is written beside the repository
    try:
        code = main(_fill(argv, files))
    except SystemExit as exit_:  # argparse
        code = exit_.code
    assert code == 2
    _one_error_line(capsys.readouterr().err, subject.format(**files))


@pytest.mark.parametrize("argv, subject", CHILD, ids=[" ".join(a) for a, _ in CHILD])
def test_bad_input_of_the_operations_commands_exits_2(argv, subject, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "parity", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    _one_error_line(proc.stderr, subject)
