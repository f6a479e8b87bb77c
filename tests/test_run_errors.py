"""Checkpoints across device counts, float64 runs in the JAX CLIs, and failed saves.

- A checkpoint written by a 2-device JAX run (a subprocess with 2 host devices) reads in a
  1-device process through every reader: `parity convert`, `load_params` (parity
  --checkpoint / debug), the evaluator, resume; without orbax's ERROR lines, and a
  placement failure is never called a corrupt file.
- `python -m jax_meanflow.evaluate` of a float64 run enables x64 itself.
- A save that fails for lack of space names the file and the cause (both backends), keeps
  the previous checkpoint and leaves no partial file; a save that cannot fit is refused
  before it starts.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments, model_config

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **extra}


def _cli(*argv, **env):
    return subprocess.run([sys.executable, "-m", *argv], env=_env(**env), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    """A float64 tiny run of 2 updates on 2 host devices, written through the JAX CLI."""
    run = tmp_path_factory.mktemp("mesh") / "run"
    out = _cli("jax_meanflow.train", "--preset", "tiny", "--no-progress", "--set", f"out_dir={run}", "devices=2",
               "steps=2", "ckpt_every=1", "dtype=float64", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert out.returncode == 0, out.stderr[-3000:]
    return str(run)


def test_convert_a_two_device_checkpoint_on_one_device(two_device_run, tmp_path):
    dst = tmp_path / "w.safetensors"
    out = _cli("parity", "convert", f"{two_device_run}/checkpoints/2/params", str(dst), "--arch", "dit", "--preset",
               "tiny", "--set", "in_channels=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR" not in out.stderr and "corrupt" not in out.stderr, out.stderr[-3000:]
    assert dst.stat().st_size > 0


def test_load_params_of_a_two_device_checkpoint_keeps_float64(two_device_run):
    """The reader of `parity --checkpoint` and `parity debug --checkpoint`, in this 1-device process."""
    import jax

    from parity import get_arch
    from parity.convert import checkpoints

    assert jax.device_count() == 1
    cfg = model_config(apply_assignments(TRAIN_PRESETS["tiny"], []))
    tree = checkpoints.load_params(f"{two_device_run}/checkpoints/2", get_arch("dit"), cfg, key="ema_params")
    leaves = jax.tree.leaves(tree)
    assert leaves and all(str(a.dtype) == "float64" for a in leaves)


def test_evaluate_and_resume_a_float64_two_device_run_on_one_device(two_device_run, tmp_path):
    out = _cli("jax_meanflow.evaluate", "--run", two_device_run, "--n-per-class", "2", "--no-plots", "--no-anchors")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR" not in out.stderr and "| 2 |" in out.stdout, (out.stdout, out.stderr[-3000:])
    run = tmp_path / "resumed"
    shutil.copytree(two_device_run, run)
    out = _cli("jax_meanflow.train", "--resume", "--no-progress", "--set", f"out_dir={run}", "steps=3", "devices=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "done: 3 steps" in out.stdout


def test_a_placement_failure_is_not_called_corrupt(tmp_path):
    from jax_meanflow.checkpoint import CheckpointDeviceError, _read
    from meanflow_common.checks import UnreadableCheckpointError

    (tmp_path / "_METADATA").write_text("{}")

    def misplaced():
        raise ValueError("sharding passed to deserialization should be specified, concrete and an instance of "
                         "`jax.sharding.Sharding`.")

    with pytest.raises(CheckpointDeviceError) as err:
        _read(str(tmp_path), misplaced)
    assert "not damaged" in str(err.value) and "corrupt" not in str(err.value)
    assert not isinstance(err.value, UnreadableCheckpointError)  # resume must not skip it as damaged

    def garbage():
        raise ValueError("Error opening \"zarr\" driver: Error reading local file")

    with pytest.raises(UnreadableCheckpointError, match="may be truncated or corrupt"):
        _read(str(tmp_path), garbage)


# ----------------------------------------------------------------------------------
# Failed saves
# ----------------------------------------------------------------------------------


def _train_module(backend):
    import importlib

    return importlib.import_module(f"{backend}_meanflow.train")


@pytest.fixture(params=["torch", "jax"])
def one_step_run(request, tmp_path):
    backend = request.param
    run = tmp_path / "run"
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={run}", "steps=1"])
    _train_module(backend).train(cfg, progress=False)
    return backend, run


def _full_disk(backend, monkeypatch):
    """The writer fails as on a full disk, after writing part of its temporary file(s)."""
    if backend == "torch":
        import torch

        real = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):  # what torch says when it owns the file
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(torch, "save", save)
        return real
    import orbax.checkpoint as ocp

    def save(self, step, *args, **kwargs):
        os.makedirs(os.path.join(str(self.directory), f"{step}.orbax-checkpoint-tmp", "params"), exist_ok=True)
        raise ValueError(f"RESOURCE_EXHAUSTED: Error writing local file \"{self.directory}/{step}.orbax-checkpoint-"
                         "tmp/params/_sharding\": No space left on device [os_error_code='28']")

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(one_step_run, monkeypatch, capsys):
    backend, run = one_step_run
    T = _train_module(backend)
    ckpt = run / "checkpoints"
    before = sorted(os.listdir(ckpt))
    _full_disk(backend, monkeypatch)
    status = T.main(["--resume", "--no-progress", "--set", f"out_dir={run}", "steps=2"])
    err = capsys.readouterr().err
    assert status == 1, err[-3000:]
    name = "ckpt_00000002.pt" if backend == "torch" else "2"
    assert f"error: no space left on device while writing the checkpoint {ckpt / name}" in err, err[-3000:]
    assert sorted(os.listdir(ckpt)) == before  # the previous checkpoint, and no partial file
    monkeypatch.undo()
    assert T.load_run(str(run)).step == 1  # and it still reads


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(one_step_run, monkeypatch, capsys):
    import meanflow_common.checks as checks

    backend, run = one_step_run
    T = _train_module(backend)
    ckpt = run / "checkpoints"
    before = sorted(os.listdir(ckpt))
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1000))
    status = T.main(["--resume", "--no-progress", "--set", f"out_dir={run}", "steps=2"])
    err = capsys.readouterr().err
    assert status == 1, err[-3000:]
    assert "no space left on device for the checkpoint" in err and "MB free" in err, err[-3000:]
    assert sorted(os.listdir(ckpt)) == before
