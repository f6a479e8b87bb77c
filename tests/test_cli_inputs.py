"""Every command line refuses bad input before doing any work, naming the flag, field or value
(exit status 2): the parity report and debugger, the training parity, the benchmarks, the
evaluators and the trainers."""
from __future__ import annotations

import importlib

import pytest


def _run(module: str, argv: list[str]) -> int:
    main = importlib.import_module(module).main
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse errors
        return exit_.code


CASES = [
    ("parity.cli", ["--set", "depht=3"], "unknown field 'depht'"),
    ("parity.cli", ["--arch", "dit", "--set", "depht=3"], "unknown field 'depht' of DiTConfig"),
    ("parity.cli", ["--set", "depth"], "not of the form FIELD=VALUE"),
    ("parity.cli", ["--batch", "0"], "argument --batch: must be an integer >= 1, got '0'"),
    ("parity.cli", ["--dtype", "float16"], "--dtype 'float16' is not supported; the parity checks compare float32, "
                                           "float64"),
    ("parity.cli", ["--seed", "-2"], "argument --seed: must be an integer >= 0"),
    ("parity.cli", ["--trained-steps", "-1"], "argument --trained-steps"),
    ("parity.cli", ["--arch", "dit", "--set", "num_heads=0"], "DiTConfig.num_heads=0 must be >= 1"),
    ("parity.cli", ["--arch", "dit", "--set", "depth=two"], "DiTConfig.depth='two': expected int"),
    ("parity.cli", ["convert", "a", "b", "--arch", "dit", "--preset", "tiny", "--set", "depht=1"],
     "unknown field 'depht' for DiTConfig"),
    ("parity.cli", ["debug", "--batch", "0"], "argument --batch: must be an integer >= 1"),
    ("parity.cli", ["debug", "--set", "depht=1", "--out", "unused"], "unknown field 'depht'"),
    ("parity.train_parity", ["--dtype", "float16"], "TrainConfig.dtype='float16' is not one of"),
    ("parity.train_parity", ["--steps", "0"], "argument --steps: must be an integer >= 1"),
    ("parity.train_parity", ["--preset", "tiny_reach"], "is a reach recipe"),
    ("parity.train_parity", ["--set", "depht=2"], "unknown config field 'depht'"),
    ("parity.bench", ["--batch", "0"], "argument --batch: must be an integer >= 1"),
    ("parity.bench", ["--steps", "2.5"], "argument --steps: must be an integer >= 1, got '2.5'"),
    ("parity.bench.profile", ["--top", "0"], "argument --top"),
    ("torch_meanflow.evaluate", ["--run", "x", "--num-steps", "0"], "argument --num-steps: must be an integer >= 1"),
    ("jax_meanflow.evaluate", ["--run", "x", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    ("torch_meanflow.train", ["--preset", "tiny", "--set", "lr=-1e-3"], "OptimConfig.lr=-0.001 must be > 0.0"),
    ("jax_meanflow.train", ["--preset", "tiny", "--set", "b2=1.5"], "OptimConfig.b2=1.5 must be >= 0.0 and < 1.0"),
    ("jax_meanflow.train", ["--preset", "tiny", "--set", "clip_actions=no"], "expected a bool (true/false/1/0)"),
]


@pytest.mark.parametrize("module, argv, words", CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in CASES])
def test_bad_command_lines_are_refused_naming_the_problem(module, argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not into the repository
    assert _run(module, argv) == 2
    assert words in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
