"""The example network pair of examples/conv_velocity, as a user runs it: the command line, the
Python API, the pytest plugin, the debugger and the converter; and its deliberately broken
port, which all three entry points must fail, with the debugger blaming the broken module.

Float64 where a single dtype is enough (the oracle mode: rounding is ~1e-15, a bug ~1e-1).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import parity
from examples.conv_velocity import ARCH, BROKEN, VARIANTS
from parity.cli import main
from parity.convert import checkpoints

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_command_line_passes_on_the_example():
    """`python -m parity --arch examples.conv_velocity:ARCH`, the first command of docs/EXTENDING.md."""
    proc = subprocess.run([sys.executable, "-m", "parity", "--arch", "examples.conv_velocity:ARCH"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed, 0 failed" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("conv_velocity ")]
    # 2 variants x 2 dtypes x 7 quantities and the trained-weights variant in both dtypes (42),
    # the branch coverage of each variant (2) and float32 with JAX's x64 off (7)
    assert len(rows) == 51 and all("PASS" in r for r in rows), len(rows)
    assert sum(r[2] == "x64" for r in rows) == 7


def test_command_line_fails_on_the_broken_port(capsys):
    code = main(["--arch", "examples.conv_velocity:BROKEN", "--dtype", "float64", "--trained-steps", "0",
                 "--checks", "none"])
    out = capsys.readouterr().out
    assert code == 1
    rows = [line.split() for line in out.splitlines() if " FAIL " in line]
    failing = {row[row.index("cpu") + 1] for row in rows}
    assert {"u", "du_dt", "u_tgt", "loss"} <= failing, out[-2000:]


def test_api_report_passes_and_the_broken_port_raises():
    # the objective rows and a check beside them (the default checks, the command line's, are
    # test_command_line_passes_on_the_example's; the default is one: test_parity_extra_checks)
    report = parity.check(ARCH, dtypes=("float64", "float32"), checks="branches")
    assert report.passed and report.assert_ok() is report
    assert len(report.results) == 2 * 2 * 7 + 2 and {r.arch for r in report.results} == {"conv_velocity"}
    broken = parity.check(BROKEN, dtypes=("float64",), checks="none")
    assert not broken.passed
    with pytest.raises(parity.ParityError) as err:
        broken.assert_ok()
    msg = str(err.value)
    assert "conv_velocity_broken / cfg / float64 / cpu: failing u, du_dt" in msg
    assert "worst " in msg and "max rel" in msg
    assert "blamed: blocks.1 " in msg, msg
    one = BROKEN.default_variants()[1]  # a single Variant is a target too
    with pytest.raises(parity.ParityError, match=r"(?s)conv_velocity_broken / no cfg .*blamed: blocks.1 "):
        parity.check(one, dtypes=("float64",), raise_on_failure=True)


def test_api_takes_variants_and_specs():
    assert parity.resolve_variants("examples.conv_velocity:VARIANTS") == VARIANTS
    assert [v.name for v in parity.resolve_variants("examples.conv_velocity:ARCH")] == ["cfg", "no cfg"]
    with pytest.raises(ValueError, match="has no 'NOPE'"):
        parity.resolve_variants("examples.conv_velocity:NOPE")
    with pytest.raises(ValueError, match="cannot import module 'examples.nothing'"):
        parity.resolve_variants("examples.nothing:ARCH")
    with pytest.raises(TypeError, match="not an Arch, a Variant"):
        parity.resolve_variants("examples.conv_velocity:PRESETS")
    with pytest.raises(TypeError, match="Variant.arch must be an Arch object"):
        parity.Variant("conv_velocity", "x", VARIANTS[0].model_cfg, VARIANTS[0].mf_cfg)


def test_pytest_plugin_passes_and_fails_readably(pytester, monkeypatch):
    """A user's own test suite: the plugin comes from the installed `pytest11` entry point."""
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])
    pytester.makepyfile(test_user=textwrap.dedent("""
        from examples.conv_velocity import ARCH, BROKEN

        def test_port(parity_check):
            report = parity_check(ARCH, dtypes=("float64",))
            assert report.passed

        def test_broken_port(parity_check):
            parity_check(BROKEN.default_variants()[0], dtypes=("float64",), checks="none")

        def test_broken_port_raises(parity_check):
            import parity, pytest
            with pytest.raises(parity.ParityError, match="blamed: blocks.1"):
                parity_check(BROKEN.default_variants()[0], dtypes=("float64",), checks="none")
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "parity")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "conv_velocity_broken / cfg / float64 / cpu: failing u, du_dt" in out
    assert "blamed: blocks.1 " in out and "worst " in out


def test_debugger_blames_the_broken_module(tmp_path):
    out = tmp_path / "dbg"
    assert main(["debug", "--arch", "examples.conv_velocity:BROKEN", "--out", str(out),
                 "--json", str(out / "d.json")]) == 1
    data = json.loads((out / "d.json").read_text())
    assert data["blamed"] == "blocks.1" and data["first_over"] == "blocks.1.conv2"
    assert main(["debug", "--arch", "examples.conv_velocity:ARCH", "--out", str(out), "--json",
                 str(out / "c.json")]) == 0
    clean = json.loads((out / "c.json").read_text())
    assert clean["clean"] and len(clean["modules"]) == 14 and clean["torch_only"] == []  # every module compared


def test_convert_round_trip_and_check_on_the_converted_weights(tmp_path):
    from parity.core.harness import random_params

    v = ARCH.default_variants()[0]
    params = random_params(ARCH, v, seed=4)
    src = tmp_path / "ckpt"
    checkpoints.save_orbax(params, str(src))
    st = tmp_path / "model.safetensors"
    assert main(["convert", str(src), str(st), "--arch", "examples.conv_velocity:ARCH"]) == 0
    back = tmp_path / "back"
    assert main(["convert", str(st), str(back), "--arch", "examples.conv_velocity:ARCH"]) == 0
    a = parity.convert.flatten_tree(params)
    b = parity.convert.flatten_tree(checkpoints.load_params(str(back), ARCH, v.model_cfg))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sd = checkpoints.read_torch_file(str(st))
    assert sd["blocks.1.conv1.weight"].shape == (16, 16, 3, 3)  # OIHW on the torch side
    assert main(["--arch", "examples.conv_velocity:ARCH", "--variant", "no cfg", "--dtype", "float64",
                 "--checkpoint", str(st)]) == 0
    # another size of the example is refused, naming the key
    assert main(["convert", str(st), str(tmp_path / "x.pt"), "--arch", "examples.conv_velocity:ARCH",
                 "--preset", "small"]) == 2


def test_entry_point_group_registers_an_installed_arch(tmp_path, monkeypatch):
    """A package that declares `[parity.archs] name = module:ARCH` is found by `--arch name`."""
    dist = tmp_path / "myarchs-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myarchs\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[parity.archs]\nconv_velocity_ep = examples.conv_velocity:ARCH\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert parity.get_arch("conv_velocity_ep") is ARCH
    with pytest.raises(KeyError, match="unknown architecture 'conv_velocity_nope'"):
        parity.get_arch("conv_velocity_nope")


def test_benchmark_takes_the_example(tmp_path):
    """`python -m parity bench --arch examples.conv_velocity:ARCH`: the same train-step runners
    on a user's network, with the cross-backend first-step check."""
    from parity.bench import run as bench

    path = tmp_path / "bench.json"
    assert bench.main(["--quick", "--arch", "examples.conv_velocity:ARCH", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    (case,) = report["cases"]
    assert case["name"] == "conv_velocity" and case["arch"] == "conv_velocity"
    names = {r["name"] for r in case["runners"]}
    assert {"jax jit mf", "torch eager mf", "torch eager fm"} <= names
    first = case["checks"]["first_step_jax_vs_torch"]
    assert first["loss"] < 1e-4 and first["grad_norm"] < 1e-4
    assert case["checks"]["du_dt_rules_vs_torch_func"] < 1e-5
