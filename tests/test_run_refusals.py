"""A refused command changes nothing in the run folder, and a run folder stays one.

`--resume` of a run whose every checkpoint is unreadable is refused, and refused again the
next time (no checkpoint renamed, config.json and metrics.csv untouched: never a silent
fresh start), until `--overwrite`; `--resume` to fewer steps than the checkpoint holds is a
usage error (exit status 2) that leaves config.json as it was. Both backends.
"""
from __future__ import annotations

import hashlib
import importlib
import os

import pytest

from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


def _main(module: str, argv: list[str]) -> int:
    try:
        return importlib.import_module(module).main(argv)
    except SystemExit as exit_:  # argparse errors
        return exit_.code


def _snapshot(folder) -> dict:
    """{relative path: sha1 of its bytes (None for a folder)} of everything under `folder`."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            out[rel] = None if os.path.isdir(path) else hashlib.sha1(open(path, "rb").read()).hexdigest()
    return out


def _damage_all(backend: str, run_dir: str) -> None:
    ckpt = os.path.join(run_dir, "checkpoints")
    for name in os.listdir(ckpt):
        if backend == "torch":
            with open(os.path.join(ckpt, name), "r+b") as f:
                f.truncate(100)
        elif name.isdigit():
            with open(os.path.join(ckpt, name, "params", "_METADATA"), "w") as f:
                f.write("{ not json")


@pytest.fixture(scope="module", params=["torch", "jax"])
def trained(request, tmp_path_factory):
    """(backend, a finished 2-step run with checkpoints at steps 1 and 2)."""
    backend = request.param
    train = importlib.import_module(f"{backend}_meanflow.train").train
    run = tmp_path_factory.mktemp(backend) / "run"
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={run}", "steps=2", "ckpt_every=1", "keep_last=2"])
    train(cfg, progress=False)
    return backend, str(run)


def _copy(src: str, dst) -> str:
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_a_refused_resume_changes_nothing_and_is_refused_again(trained, tmp_path, capsys):
    backend, src = trained
    run = _copy(src, tmp_path / "run")
    _damage_all(backend, run)
    before = _snapshot(run)
    for attempt in range(2):
        status = _main(f"{backend}_meanflow.train", ["--resume", "--set", f"out_dir={run}", "--no-progress"])
        err = capsys.readouterr().err
        assert status == 1, (attempt, err[-2000:])
        assert "no checkpoint in" in err and "can be read" in err, err[-2000:]
        assert "Traceback" not in err
        assert _snapshot(run) == before, attempt  # nothing renamed, config.json and metrics.csv as they were
    # the user's way out: --overwrite starts the run afresh
    assert _main(f"{backend}_meanflow.train", ["--overwrite", "--preset", "tiny", "--set", f"out_dir={run}",
                                                "steps=1", "--no-progress"]) == 0


def test_a_folder_left_with_set_aside_checkpoints_only_is_refused(trained, tmp_path, capsys):
    """Folders damaged before this rule: every checkpoint already renamed to *.unreadable."""
    backend, src = trained
    run = _copy(src, tmp_path / "run")
    ckpt = os.path.join(run, "checkpoints")
    for name in os.listdir(ckpt):
        os.replace(os.path.join(ckpt, name), os.path.join(ckpt, name + ".unreadable"))
    before = _snapshot(run)
    assert _main(f"{backend}_meanflow.train", ["--resume", "--set", f"out_dir={run}", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "only the unreadable" in err and "--overwrite" in err, err[-2000:]
    assert _snapshot(run) == before


def test_resume_to_fewer_steps_is_refused_and_keeps_the_config(trained, tmp_path, capsys):
    backend, src = trained
    run = _copy(src, tmp_path / "run")
    before = _snapshot(run)
    status = _main(f"{backend}_meanflow.train", ["--resume", "--set", f"out_dir={run}", "steps=1", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert "steps=1 is below the step of the checkpoint" in err and "(2)" in err, err
    assert _snapshot(run) == before  # config.json still says steps=2


def test_a_newer_unreadable_checkpoint_is_set_aside_only_when_the_resume_goes_ahead(trained, tmp_path):
    from meanflow_common.train_loop import restore_newest

    backend, src = trained
    run = _copy(src, tmp_path / "run")
    train = importlib.import_module(f"{backend}_meanflow.train")
    hooks = train.JaxBackend() if backend == "jax" else train.TorchBackend()
    ckpt_dir = os.path.join(run, "checkpoints")
    newest = hooks.list_checkpoints(ckpt_dir)[-1][1]
    if backend == "torch":
        with open(newest, "r+b") as f:
            f.truncate(100)
    else:
        with open(os.path.join(newest, "params", "_METADATA"), "w") as f:
            f.write("{ not json")
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={run}"])
    model, params = hooks.make_model(cfg)
    state = hooks.create_state(cfg, model, params)

    def refuse(meta, path):
        raise ValueError(f"refused {path}")

    with pytest.raises(ValueError, match="refused"):  # the readable older one is refused: nothing renamed
        restore_newest(hooks, ckpt_dir, state, set_aside=True, accept=refuse)
    assert os.path.exists(newest) and not os.path.exists(newest + ".unreadable")
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={run}", "steps=3", "ckpt_every=1", "keep_last=2"])
    with pytest.warns(RuntimeWarning, match="skipped unreadable checkpoint"):
        assert train.train(cfg, resume=True, progress=False).step == 3
    assert os.path.exists(newest + ".unreadable")
