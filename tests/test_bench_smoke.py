"""`python -m parity.bench --quick` runs end to end and reports every runner.

Benchmarks are not tests: nothing here checks a speed. It checks that the command runs,
writes its JSON with the fields the docs rely on, and that the default PyTorch JVP
engine computes the same du/dt as plain torch.func.jvp on the benchmarked networks.
"""
import json

import pytest

from parity.bench import run as bench

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    assert bench.main(["--quick", "--json", str(path)]) == 0
    return json.loads(path.read_text())


def test_every_case_times_every_runner(report):
    assert [c["name"] for c in report["cases"]] == ["dit-tiny", "flower-tiny"]
    for case in report["cases"]:
        names = {r["name"] for r in case["runners"]}
        assert {"torch eager mf", "torch eager fm", "torch eager mf torch.func+math",
                "torch eager mf memory_saving", "torch eager mf attn=explicit"} <= names
        assert ("jax jit mf" in names) == (case["name"] == "dit-tiny")  # --quick: one XLA compile
        for r in case["runners"]:
            assert "error" not in r, (case["name"], r["name"], r.get("error"))
            assert r["wall_ms"] > 0 and r["steps"] == 2 and r["first_call_s"] > 0
            assert "peak_bytes" in r["memory"] or "method" in r["memory"]
        assert case["ratios"]["mf_over_fm"]["torch eager"] > 0


def test_jvp_engines_agree_on_the_benchmarked_networks(report):
    for case in report["cases"]:
        assert case["checks"]["du_dt_rules_vs_torch_func"] < 1e-5, case["name"]


def test_dit_first_step_agrees_across_backends(report):
    """Same weights, batch and noise: the first MeanFlow step's loss and gradient norm agree."""
    dit = report["cases"][0]["checks"]["first_step_jax_vs_torch"]
    assert dit["loss"] < 1e-4 and dit["grad_norm"] < 1e-4


def test_sampling_and_environment_are_recorded(report):
    steps = {(r["backend"], r["num_steps"]) for r in report["sampling"]}
    assert steps == {("torch", 1), ("torch", 4)}
    env = report["environment"]
    for key in ("torch", "jax", "cpu", "load_average", "torch_threads"):
        assert key in env
    assert {t["target"] for t in report["targets"]} >= {"jax_mf_over_fm", "torch_mf_over_fm", "torch_over_jax_mf"}


def test_unknown_size_is_named():
    with pytest.raises(SystemExit, match="unknown size 'dit-huge'"):
        bench.main(["--quick", "--sizes", "dit-huge"])


def test_bench_profile_breaks_a_step_down_by_op(capsys):
    from parity.bench import profile as bench_profile

    assert bench_profile.main(["--size", "dit-tiny", "--batch", "4", "--runners", "fm,mf", "--steps", "1",
                               "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "torch eager fm" in out and "torch eager mf" in out and "aten::" in out and "last - first" in out
    with pytest.raises(SystemExit, match="unknown runner 'mf-fast'"):
        bench_profile.main(["--size", "dit-tiny", "--runners", "mf-fast"])
