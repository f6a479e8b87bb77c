"""Checkpoints that are unreadable, not weights, or of another model config are refused by every
loader (parity convert / --checkpoint, the trainers' resume and load_run), naming the file,
the key or the differing fields; a parity comparison on all-zero u and du/dt fails."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from meanflow_common.config import DIT_PRESETS
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments, config_to_dict, model_config
from parity import convert
from parity.convert import checkpoints
from parity.archs.registry import default_variants, get_arch
from parity.cli import main
from parity.core.harness import random_params, run_variant
from parity.convert.tables.dit import TABLE as DIT_TABLE

TINY = DIT_PRESETS["tiny"]
TWO_HEADS = dataclasses.replace(TINY, num_heads=2)  # every tensor keeps its shape


@pytest.fixture(scope="module")
def dit_params():
    v = next(v for v in default_variants() if v.arch.name == "dit")
    return random_params(get_arch("dit"), v, seed=5)


def _damaged(path, how: str) -> None:
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        if how == "truncated":
            f.write(data[: len(data) // 2])
        elif how == "garbage":
            f.write(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_unreadable_weight_files_are_named(tmp_path, dit_params, suffix, how, capsys):
    path = tmp_path / f"w{suffix}"
    checkpoints.save_torch_file(convert.jax_to_torch(dit_params, DIT_TABLE, TINY), str(path))
    _damaged(path, how)
    with pytest.raises(ValueError) as err:
        checkpoints.load_params(str(path), get_arch("dit"), TINY)
    assert f"{path} is not a readable checkpoint" in str(err.value)
    assert ("the file is empty" in str(err.value)) == (how == "empty")
    assert main(["convert", str(path), str(tmp_path / "out.pt"), "--arch", "dit", "--preset", "tiny"]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_int32_weights_are_refused_naming_key_and_dtype(tmp_path, dit_params):
    sd = {k: np.zeros(v.shape, np.int32) for k, v in convert.jax_to_torch(dit_params, DIT_TABLE, TINY).items()}
    path = tmp_path / "zeros.safetensors"
    checkpoints.save_torch_file(sd, str(path))
    with pytest.raises(TypeError, match=r"parameter '.+' has dtype int32, not a floating point type"):
        checkpoints.load_params(str(path), get_arch("dit"), TINY)
    folder = tmp_path / "zeros_orbax"
    checkpoints.save_orbax(convert.torch_to_jax(sd, DIT_TABLE, TINY), str(folder))
    with pytest.raises(TypeError, match="has dtype int32"):
        checkpoints.load_params(str(folder), get_arch("dit"), TINY)


@pytest.mark.heavy
def test_all_zero_u_and_du_dt_fail_the_parity_check(dit_params):
    zeros = convert.unflatten_tree({k: np.zeros_like(v) for k, v in convert.flatten_tree(dit_params).items()})
    v = next(v for v in default_variants() if v.arch.name == "dit" and "no cfg" in v.name)
    results = {r.quantity: r for r in run_variant(v, "float64", params_np=zeros)}
    for q in ("u", "du_dt"):
        assert results[q].max_abs == 0.0 and not results[q].passed
        assert "identically zero" in results[q].where
    random = {r.quantity: r for r in run_variant(v, "float64", params_np=dit_params)}
    assert random["u"].passed and random["du_dt"].passed  # the same check on real weights


def test_convert_records_the_model_config_and_refuses_another(tmp_path, dit_params, capsys):
    src = tmp_path / "src"
    checkpoints.save_orbax(dit_params, str(src))
    st = tmp_path / "w.safetensors"
    assert main(["convert", str(src), str(st), "--arch", "dit", "--preset", "tiny"]) == 0
    checkpoints.load_params(str(st), get_arch("dit"), TINY)  # the recorded config matches
    with pytest.raises(ValueError, match=r"num_heads: recorded 4, now 2"):
        checkpoints.load_params(str(st), get_arch("dit"), TWO_HEADS)
    code = main(["--arch", "dit", "--variant", "no cfg", "--dtype", "float64", "--set", "num_heads=2",
                 "--checkpoint", str(st)])
    assert code == 2 and "num_heads: recorded 4, now 2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def two_head_runs(tmp_path_factory):
    """A torch run trained with 2 heads, and one with the preset's 4 (1 step each)."""
    import torch_meanflow.train as T

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, sets in (("two", ["model.num_heads=2"]), ("four", [])):
        cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={root / name}", "steps=1", *sets])
        out[name] = T.train(cfg, progress=False)
    return out


def test_a_checkpoint_of_another_config_is_refused_by_every_loader(tmp_path, two_head_runs, capsys):
    import torch_meanflow.evaluate as E
    import torch_meanflow.train as T

    two, four = two_head_runs["two"], two_head_runs["four"]
    four_cfg = model_config(apply_assignments(TRAIN_PRESETS["tiny"], []))
    # parity convert / --checkpoint: the trainer's meta records num_heads=2
    with pytest.raises(ValueError, match="num_heads: recorded 2, now 4"):
        checkpoints.load_params(two.checkpoint, get_arch("dit"), four_cfg)
    # load_run / evaluate with a checkpoint of the other run
    with pytest.raises(ValueError, match="model.num_heads: recorded 2, now 4"):
        T.load_run(four.run_dir, checkpoint=two.checkpoint)
    assert E.main(["--run", four.run_dir, "--checkpoint", two.checkpoint, "--no-plots", "--n-per-class", "2"]) == 1
    assert "trained with another config" in capsys.readouterr().err
    # resume: a foreign checkpoint in the run folder
    run = tmp_path / "resume"
    shutil.copytree(four.run_dir, run)
    for name in os.listdir(run / "checkpoints"):
        os.remove(run / "checkpoints" / name)
    shutil.copy(two.checkpoint, run / "checkpoints" / os.path.basename(two.checkpoint))
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={run}", "steps=2"])
    with pytest.raises(ValueError, match="num_heads"):
        T.train(cfg, resume=True, progress=False)


def test_a_jax_checkpoint_of_another_config_and_one_without_manifest(tmp_path):
    import jax

    from jax_meanflow.checkpoint import restore_checkpoint, save_checkpoint
    from jax_meanflow.dit import init_dit
    from jax_meanflow.train_state import create_train_state

    cfg = apply_assignments(TRAIN_PRESETS["tiny"], ["model.num_heads=2"])
    state = create_train_state(init_dit(model_config(cfg), jax.random.PRNGKey(0)), cfg.optim)
    step = save_checkpoint(str(tmp_path / "ckpt"), state, {"step": 0, "config": config_to_dict(cfg)}, 1)
    four_cfg = dataclasses.replace(model_config(cfg), num_heads=4)
    with pytest.raises(ValueError, match="num_heads: recorded 2, now 4"):
        checkpoints.load_params(os.path.join(step, "params"), get_arch("dit"), four_cfg)
    with pytest.raises(ValueError, match="num_heads: recorded 2, now 4"):
        checkpoints.load_params(step, get_arch("dit"), four_cfg, key="ema_params")  # the step folder itself
    assert checkpoints.load_params(step, get_arch("dit"), model_config(cfg), key="ema_params")
    os.remove(os.path.join(step, "params", "manifest.ocdbt"))
    with pytest.raises(ValueError, match=r"params is an incomplete checkpoint item: manifest.ocdbt missing"):
        restore_checkpoint(step, state)
    with pytest.raises(FileNotFoundError, match="incomplete orbax checkpoint: manifest.ocdbt missing"):
        checkpoints.load_params(os.path.join(step, "params"), get_arch("dit"), model_config(cfg))


def test_unreadable_trainer_checkpoint_is_named(tmp_path, two_head_runs):
    import torch_meanflow.train as T
    from torch_meanflow.checkpoint import restore_checkpoint
    from torch_meanflow.train_state import create_train_state

    path = tmp_path / "ckpt_00000001.pt"
    shutil.copy(two_head_runs["two"].checkpoint, path)
    _damaged(path, "truncated")
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], ["model.num_heads=2"])
    with pytest.raises(ValueError, match=f"{path} is not a readable checkpoint"):
        restore_checkpoint(str(path), create_train_state(T.make_model(cfg), cfg.optim))


def test_json_reports_never_write_bare_infinity(tmp_path):
    from parity.core.compare import compare
    from parity.core.report import write_json

    bad = compare(np.ones(3), np.array([1.0, np.nan, 1.0]), quantity="u", tol=1e-6, arch="dit", variant="v",
                  dtype="float64", device="cpu")
    assert bad.max_abs == float("inf")
    path = tmp_path / "r.json"
    write_json(str(path), [bad], {"elapsed_s": float("nan")})
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text

    def strict(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(text, parse_constant=strict)
    assert data["checks"][0]["max_abs"] == "inf" and data["meta"]["elapsed_s"] == "nan"
