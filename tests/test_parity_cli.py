"""`python -m parity`: the report, checkpoint conversion from the command line, bad input."""
import json

import numpy as np
import pytest

from meanflow_common.config import DIT_PRESETS
from parity import convert
from parity.archs.registry import get_arch
from parity.convert import checkpoints
from parity.archs import DIT
from parity.cli import main
from parity.core.harness import random_params
from parity.convert.tables.dit import TABLE as DIT_TABLE


@pytest.fixture(scope="module")
def dit_params():
    v = DIT.default_variants()[0]
    return random_params(DIT, v, seed=3)


@pytest.mark.heavy
def test_report_json_and_exit_status(tmp_path, capsys):
    path = tmp_path / "report.json"
    code = main(["--arch", "dit", "--variant", "no cfg", "--dtype", "float64", "--json", str(path)])
    assert code == 0
    report = json.loads(path.read_text())
    assert report["passed"] and report["checks"]
    rec = report["checks"][0]
    for k in ("arch", "dtype", "device", "quantity", "max_abs", "max_rel", "tol", "passed"):
        assert k in rec
    assert report["meta"]["precision"]["jax_default_matmul_precision"] == "highest"
    assert report["meta"]["precision"]["torch_cudnn_allow_tf32"] is False
    assert "torch" in report["meta"]["versions"]
    assert "passed, 0 failed" in capsys.readouterr().out


def test_convert_round_trip_from_the_command_line(tmp_path, dit_params):
    cfg = DIT_PRESETS["tiny"]
    src = tmp_path / "ckpt"
    checkpoints.save_orbax(dit_params, str(src))
    st = tmp_path / "model.safetensors"
    assert main(["convert", str(src), str(st), "--arch", "dit", "--preset", "tiny"]) == 0
    back = tmp_path / "back"
    assert main(["convert", str(st), str(back), "--arch", "dit", "--preset", "tiny"]) == 0
    a = convert.flatten_tree(dit_params)
    b = convert.flatten_tree(checkpoints.load_params(str(back), get_arch("dit"), cfg))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    pt = tmp_path / "model.pt"
    assert main(["convert", str(src), str(pt), "--arch", "dit", "--preset", "tiny"]) == 0
    sd = checkpoints.read_torch_file(str(pt))
    assert all(np.array_equal(sd[k], v) for k, v in checkpoints.read_torch_file(str(st)).items())


def test_report_on_a_checkpoint(tmp_path, dit_params):
    path = tmp_path / "model.safetensors"
    checkpoints.save_torch_file(convert.jax_to_torch(dit_params, DIT_TABLE, DIT_PRESETS["tiny"]), str(path))
    assert main(["--arch", "dit", "--variant", "no cfg", "--dtype", "float64", "--checkpoint", str(path)]) == 0


def test_bad_input_is_named(tmp_path, dit_params, capsys):
    assert main(["--arch", "dit", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    path = tmp_path / "dit.safetensors"
    checkpoints.save_torch_file(convert.jax_to_torch(dit_params, DIT_TABLE, DIT_PRESETS["tiny"]), str(path))
    # another size of the same architecture
    assert main(["--arch", "dit", "--preset", "small", "--variant", "no cfg", "--checkpoint", str(path)]) == 2
    assert "missing torch parameter 'blocks.2." in capsys.readouterr().err
    # the same depth, another width
    assert main(["--arch", "dit", "--variant", "no cfg", "--set", "hidden_size=32", "--checkpoint", str(path)]) == 2
    assert "shape" in capsys.readouterr().err
    # another architecture
    assert main(["--arch", "flower", "--variant", "adaln rope", "--checkpoint", str(path)]) == 2
    assert "parameter" in capsys.readouterr().err
    # nothing saved is overwritten
    before = path.read_bytes()
    assert main(["convert", str(path), str(path), "--arch", "dit", "--preset", "tiny"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["--arch", "resnet"]) == 2
    assert "unknown architecture" in capsys.readouterr().err
    assert main(["--arch", "dit", "--preset", "DiT-Q/3"]) == 2
    assert "unknown" in capsys.readouterr().err
