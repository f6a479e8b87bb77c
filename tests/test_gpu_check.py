"""`python -m parity gpu-check` on a machine without a GPU: every part skipped, each saying why,
the JSON and Markdown still written, exit status 0; and the part runner on a real CPU command."""
import json
import sys

import pytest

from parity.bench import gpu_check

no_gpu = pytest.mark.skipif(gpu_check.gpu_visible()[0], reason="a GPU is visible: this is the dry-run test")


@no_gpu
def test_dry_run_skips_every_part_and_says_why(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpu"] is False
    assert [p["name"] for p in report["parts"]] == ["suite", "dit-b4", "flower-default", "bench", "rule-xl2"]
    for p in report["parts"]:
        assert p["status"] == "skipped", p
        assert p["reason"].startswith("no GPU:") and "torch" in p["reason"] and "jax" in p["reason"], p
    env = report["environment"]
    for key in ("torch", "jax", "flax", "torch_cuda", "cudnn", "cuda_device", "precision"):
        assert key in env, key
    assert "torch_matmul_allow_tf32" in env["precision"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.count("skipped: no GPU") == 5


@no_gpu
def test_parts_not_chosen_are_skipped_as_such(tmp_path):
    assert gpu_check.main(["--out", str(tmp_path), "--parts", "bench"]) == 0
    parts = {p["name"]: p for p in json.loads((tmp_path / "gpu_check.json").read_text())["parts"]}
    assert parts["suite"]["reason"] == "not in --parts"
    assert parts["bench"]["reason"].startswith("no GPU:")


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown part 'sweet'"):
        gpu_check.main(["--out", str(tmp_path), "--parts", "suite,sweet"])
    with pytest.raises(SystemExit, match="--scale must be positive"):
        gpu_check.main(["--out", str(tmp_path), "--scale", "0"])


def test_a_stale_flag_in_a_part_fails_the_dry_run(tmp_path, monkeypatch):
    """Negative control: the dry run parses each part's command line with its CLI's parser and
    resolves its variants and benchmark sizes."""
    bench = next(p for p in gpu_check.PARTS if p[0] == "bench")
    rule = next(p for p in gpu_check.PARTS if p[0] == "rule-xl2")
    name, what, budget, command = gpu_check.PARTS[1]
    monkeypatch.setattr(gpu_check, "PARTS", (gpu_check.PARTS[0], (name, what, budget, command + " --no-such-flag")))
    with pytest.raises(SystemExit) as err:
        gpu_check.main(["--out", str(tmp_path)])
    assert err.value.code == 2  # argparse's usage error
    monkeypatch.setattr(gpu_check, "PARTS", ((name, what, budget, command.replace("kappa>0", "kappa>9")),))
    with pytest.raises(SystemExit, match="no variant matches"):
        gpu_check.main(["--out", str(tmp_path)])
    name, what, budget, command = bench
    monkeypatch.setattr(gpu_check, "PARTS", ((name, what, budget, command.replace("dit-b4", "dit-b5")),))
    with pytest.raises(SystemExit, match="unknown size 'dit-b5'"):
        gpu_check.main(["--out", str(tmp_path)])
    name, what, budget, command = rule
    monkeypatch.setattr(gpu_check, "PARTS", ((name, what, budget, command.replace("XL/2", "XL/3")),))
    with pytest.raises(SystemExit, match="unknown dit preset 'DiT-XL/3'"):
        gpu_check.main(["--out", str(tmp_path)])


@pytest.mark.heavy
def test_run_part_on_a_real_cpu_command(tmp_path):
    """The runner and the summary on a real (tiny, CPU, float64) parity report; and a part
    that overruns its budget is stopped and reported as timed out."""
    argv = ("parity --arch dit --variant 'cfg kappa>0' --dtype float64 --device cpu --checks none "
            "--trained-steps 0 --batch 2 --json {out}")
    rec = gpu_check.run_part("suite", argv, 120, str(tmp_path), sys.executable)
    assert rec["status"] == "ran" and rec["reason"] == "", rec
    s = rec["summary"]
    assert s["passed"] is True and s["checks"] > 5 and s["failed"] == [] and s["tf32_drift_worst_rel"] is None
    slow = gpu_check.run_part("suite", argv, 0.5, str(tmp_path), sys.executable)
    assert slow["status"] == "timed out" and "stopped after its budget" in slow["reason"], slow


def test_summary_separates_the_tf32_drift_from_the_checks():
    row = dict(arch="dit", dtype="float32", device="cuda", tol=2e-6, where="", info={})
    info = {"informational": True}
    payload = {"passed": False, "checks": [
        dict(row, variant="cfg", quantity="u", max_rel=1e-6, passed=True),
        dict(row, variant="cfg", quantity="grad:w", max_rel=3e-5, passed=False),
        dict(row, variant="cfg TF32", quantity="u", max_rel=4e-4, passed=True, info=info),
        dict(row, variant="cfg TF32", quantity="grad:w", max_rel=2e-3, passed=True, info=info),
        dict(row, variant="cfg bf16-mixed", quantity="du_dt", max_rel=2e-2, passed=True, info=info)]}
    s = gpu_check._summarise("suite", payload)
    assert s["checks"] == 2 and len(s["failed"]) == 1 and "grad:w" in s["failed"][0]
    assert s["tf32_drift_worst_rel"] == {"u": 4e-4, "grad": 2e-3}
    assert s["bf16_mixed_worst_rel"] == {"du_dt": 2e-2}
