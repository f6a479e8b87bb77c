"""Both trainers through the one loop: exact resume, NaN stop, keep-last-k, the run folder
(refusal, lock, nothing written by a refused run, fallback past an unreadable checkpoint,
leftovers of interrupted saves), bad input, the CLI, options. Every test runs on both
backends.

Every run starts from randomised parameters (the DiT's zero-initialised layers would
make u == 0 at the first steps). The runs share one recipe ("tiny", fast_compile) so the
JAX train step compiles once for the whole file.
"""
import dataclasses
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from meanflow_common.data import batch_at

from meanflow_common.tasks import get_dataset
from meanflow_common.metrics import NonFiniteLossError, read_metrics
from meanflow_common.run_lock import LOCK_NAME, RunLockedError
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments
from meanflow_common.train_loop import UnreadableCheckpointError

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)


class Jax:
    name = "jax"

    def __init__(self):
        import jax

        from jax_meanflow import checkpoint, train
        from jax_meanflow.params import randomize_params

        self.jax, self.T, self.ckpt, self._randomize = jax, train, checkpoint, randomize_params

    def random_init(self, cfg, dataset, seed=3):
        _, params = self.T.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
        return self._randomize(params, seed)

    def weights(self, state) -> list:
        return [np.asarray(a) for a in self.jax.tree.leaves((state.params, state.ema_params))]

    def master_dtype(self, state):
        return self.jax.tree.leaves(state.params)[0].dtype

    def empty_state(self, cfg, dataset):
        from jax_meanflow.train_state import create_train_state

        _, params = self.T.make_model(cfg, batch_at(dataset, 0, 0, cfg.batch_size))
        return create_train_state(params, cfg.optim)

    def truncate(self, path):
        """Damage a checkpoint folder: every data file of its params cut to a few bytes."""
        for root, _, names in os.walk(os.path.join(path, "params")):
            for n in names:
                with open(os.path.join(root, n), "r+b") as f:
                    f.truncate(3)

    def leftover(self, ckpt_dir):
        path = os.path.join(ckpt_dir, "6.orbax-checkpoint-tmp-123")
        os.makedirs(os.path.join(path, "params"))
        return path


class Torch:
    name = "torch"

    def __init__(self):
        import torch

        from torch_meanflow import checkpoint, train
        from torch_meanflow.params import randomize_params

        self.torch, self.T, self.ckpt, self._randomize = torch, train, checkpoint, randomize_params

    def random_init(self, cfg, dataset, seed=3):
        model = self.T.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
        return {k: v.clone() for k, v in self._randomize(model, seed).state_dict().items()}

    def weights(self, state) -> list:
        return [t.detach().numpy() for m in (state.model, state.ema_model) for t in m.state_dict().values()]

    def master_dtype(self, state):
        return next(state.model.parameters()).detach().numpy().dtype

    def empty_state(self, cfg, dataset):
        from torch_meanflow.train_state import create_train_state

        return create_train_state(self.T.make_model(cfg, batch_at(dataset, 0, 0, cfg.batch_size)), cfg.optim)

    def truncate(self, path):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)

    def leftover(self, ckpt_dir):
        path = os.path.join(ckpt_dir, ".ckpt_abc123.part")
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        return path


@pytest.fixture(scope="module", params=["jax", "torch"])
def B(request):
    return Jax() if request.param == "jax" else Torch()


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", 0)


def _cfg(tmp_path, name, *sets):
    return apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={tmp_path / name}", *sets])


def _steps(B, ckpt_dir):
    return [s for s, _ in B.ckpt.list_checkpoints(ckpt_dir)]


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


def test_resume_repeats_the_uninterrupted_run(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "full", "steps=6", "ckpt_every=2", "keep_last=2")
    init = B.random_init(cfg, digits)
    full = B.T.train(cfg, dataset=digits, init_params=init, progress=False)
    assert _steps(B, os.path.join(cfg.out_dir, "checkpoints")) == [4, 6]  # keep-last-k

    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"), keep_last=3)

    def crash(state, step, run_dir):
        if step == 5:
            raise KeyboardInterrupt  # stopped between checkpoints 4 and 6
    with pytest.raises(KeyboardInterrupt):
        B.T.train(dataclasses.replace(part, eval_every=1), dataset=digits, init_params=init, eval_fn=crash,
                  progress=False)
    assert _steps(B, os.path.join(part.out_dir, "checkpoints")) == [2, 4]
    assert not os.path.exists(os.path.join(part.out_dir, LOCK_NAME))  # released on the way out
    resumed = B.T.train(part, dataset=digits, resume=True, progress=False)

    assert sorted(resumed.losses) == [5, 6]
    assert [resumed.losses[k] for k in (5, 6)] == [full.losses[k] for k in (5, 6)]
    rows_full = read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    rows_part = read_metrics(os.path.join(part.out_dir, "metrics.csv"))
    assert [r["step"] for r in rows_part] == [1, 2, 3, 4, 5, 6]  # rows 5.. of the crashed run dropped
    assert [r["loss"] for r in rows_part] == [r["loss"] for r in rows_full]
    assert len(set(r["loss"] for r in rows_full)) > 1  # a moving trajectory, not a constant
    assert all(r["devices"] == 1 and r["samples_per_s"] == pytest.approx(8 * r["steps_per_s"]) for r in rows_full)
    for x, y in zip(B.weights(full.state), B.weights(resumed.state)):
        np.testing.assert_array_equal(x, y)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "nan", "steps=8", "ckpt_every=2")

    def poisoned(dataset, seed, step, batch_size):
        batch = batch_at(dataset, seed, step, batch_size)
        if step == 4:  # the batch of update 5
            batch["x"][0, 0, 0, 0] = np.nan
        return batch

    with pytest.raises(NonFiniteLossError, match="at step 5") as err:
        B.T.train(cfg, dataset=digits, batch_fn=poisoned, init_params=B.random_init(cfg, digits), progress=False)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    assert str(err.value).rstrip().endswith(B.ckpt.latest_checkpoint(ckpt_dir))
    assert _steps(B, ckpt_dir) == [2, 4]
    state, meta = B.ckpt.restore_checkpoint(B.ckpt.latest_checkpoint(ckpt_dir), B.empty_state(cfg, digits))
    assert int(meta["step"]) == 4 and meta["data_position"] == 4 and meta["world"] == {"processes": 1, "devices": 1}
    assert all(np.isfinite(w).all() for w in B.weights(state))


def test_an_existing_run_is_refused_and_left_untouched(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "run", "steps=2")
    B.T.train(cfg, dataset=digits, init_params=B.random_init(cfg, digits), progress=False)
    before = _files(cfg.out_dir)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        B.T.train(cfg, dataset=digits, progress=False)
    other = apply_assignments(cfg, ["hidden_size=32"])  # another architecture in the same folder
    with pytest.raises(ValueError, match="hidden_size"):
        B.T.train(other, dataset=digits, resume=True, progress=False)
    assert _files(cfg.out_dir) == before

    narrow = apply_assignments(cfg, ["hidden_size=32"])
    with pytest.raises(ValueError, match=r"has shape .*the model expects"):
        B.ckpt.restore_checkpoint(B.ckpt.latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")),
                                  B.empty_state(narrow, digits))


def test_a_refused_run_leaves_nothing_behind(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "bad", "input_size=16")
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 1\] NHWC"):
        B.T.train(cfg, dataset=digits, progress=False)
    assert not os.path.exists(cfg.out_dir)

    def nchw(dataset, seed, step, batch_size):
        batch = batch_at(dataset, seed, step, batch_size)
        return {**batch, "x": batch["x"].transpose(0, 3, 1, 2)}

    with pytest.raises(ValueError, match="looks NCHW"):
        B.T.train(_cfg(tmp_path, "nchw"), dataset=digits, batch_fn=nchw, progress=False)
    # devices: more than this process has (the model, the optimizer and the devices are all
    # checked before the folder is touched), then the corrected rerun goes through
    two = _cfg(tmp_path, "two", "steps=1", "devices=2")
    with pytest.raises(ValueError, match="devices=2"):
        B.T.train(two, dataset=digits, progress=False)
    assert not os.path.exists(two.out_dir)
    fixed = dataclasses.replace(two, devices=1)
    with pytest.raises(FileNotFoundError, match="no run to resume"):
        B.T.train(fixed, dataset=digits, resume=True, progress=False)
    assert not os.path.exists(two.out_dir)
    assert B.T.train(fixed, dataset=digits, init_params=B.random_init(fixed, digits), progress=False).step == 1


def test_a_second_writer_is_refused_while_a_run_holds_the_folder(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "busy", "steps=3", "ckpt_every=1")
    init = B.random_init(cfg, digits)
    started, release, errors = threading.Event(), threading.Event(), []

    def hold(step, state, metrics):
        if step == 1:
            started.set()
            release.wait(60)

    def first():
        try:
            B.T.train(cfg, dataset=digits, init_params=init, on_step=hold, progress=False)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(120)
        for kwargs in ({"overwrite": True}, {"resume": True}):
            with pytest.raises(RunLockedError, match=f"in use by another trainer \\(pid {os.getpid()}"):
                B.T.train(cfg, dataset=digits, progress=False, **kwargs)
    finally:
        release.set()
        thread.join()
    assert not errors
    assert _steps(B, os.path.join(cfg.out_dir, "checkpoints")) == [1, 2, 3]  # the first run was not disturbed
    assert not os.path.exists(os.path.join(cfg.out_dir, LOCK_NAME))


def test_a_stale_lock_is_replaced_and_reported(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "stale", "steps=1")
    os.makedirs(cfg.out_dir)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(os.path.join(cfg.out_dir, LOCK_NAME), "w") as f:
        json.dump({"pid": dead.pid, "host": os.uname().nodename}, f)
    with pytest.warns(RuntimeWarning, match=f"stale lock .*pid {dead.pid} is not running"):
        B.T.train(cfg, dataset=digits, init_params=B.random_init(cfg, digits), progress=False)
    assert not os.path.exists(os.path.join(cfg.out_dir, LOCK_NAME))


def test_resume_falls_back_past_an_unreadable_checkpoint_and_cleans_leftovers(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "trunc", "steps=4", "ckpt_every=2")
    init = B.random_init(cfg, digits)
    B.T.train(cfg, dataset=digits, init_params=init, progress=False)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    newest = B.ckpt.latest_checkpoint(ckpt_dir)
    B.truncate(newest)
    with pytest.raises(UnreadableCheckpointError, match="not a readable checkpoint"):
        B.ckpt.restore_checkpoint(newest, B.empty_state(cfg, digits))
    leftover = B.leftover(ckpt_dir)

    longer = dataclasses.replace(cfg, steps=6)
    with pytest.warns(RuntimeWarning) as caught:
        resumed = B.T.train(longer, dataset=digits, resume=True, progress=False)
    said = " | ".join(str(w.message) for w in caught)
    assert "removed leftovers of interrupted saves" in said and leftover in said
    assert f"skipped unreadable checkpoint(s) {newest}" in said and "resuming from" in said
    assert sorted(resumed.losses) == [3, 4, 5, 6]  # restarted after update 2
    assert not os.path.exists(leftover) and os.path.exists(newest + ".unreadable")

    full = B.T.train(dataclasses.replace(longer, out_dir=str(tmp_path / "full")), dataset=digits,
                     init_params=init, progress=False)
    for x, y in zip(B.weights(full.state), B.weights(resumed.state)):
        np.testing.assert_array_equal(x, y)

    # nothing readable left: an error naming the files, not a silent fresh start
    for _, path in B.ckpt.list_checkpoints(ckpt_dir):
        B.truncate(path)
    with pytest.raises(UnreadableCheckpointError, match="no checkpoint in .* can be read"):
        B.T.train(dataclasses.replace(longer, steps=8), dataset=digits, resume=True, progress=False)


def test_cli_runs_resumes_and_rejects_bad_flags(tmp_path, capsys, B):
    out = tmp_path / "cli"
    assert B.T.main(["--preset", "tiny", "--set", f"out_dir={out}", "steps=2", "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "loss.png", "metrics.csv"]
    assert json.loads((out / "config.json").read_text())["world"] == {"processes": 1, "devices": 1}
    assert B.T.main(["--resume", "--set", f"out_dir={out}", "steps=3", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]
    assert B.T.main(["--preset", "tiny", "--set", f"out_dir={out}", "--no-progress"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    for bad in (["--bogus"], ["--preset", "nope"], ["--set", "bogus=1"], ["--set", "lr=abc"]):
        with pytest.raises(SystemExit) as exc:
            B.T.main(bad)
        assert exc.value.code == 2


def test_warmup_schedule_and_grad_norm_reach_the_csv(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "warm", "steps=4", "warmup_steps=2", "grad_clip=0.5")
    B.T.train(cfg, dataset=digits, init_params=B.random_init(cfg, digits), progress=False)
    rows = read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    np.testing.assert_allclose([r["lr"] for r in rows], [0.0, 5e-4, 1e-3, 1e-3])
    assert all(r["grad_norm"] > 0 and np.isfinite(r["v_loss"]) and r["steps_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["meanflow", "regression"])
def test_reach_policy_in_bfloat16(tmp_path, B, method):
    cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / method}", "steps=2",
                                                          "dtype=bfloat16", "n_layers=1", f"method={method}"])
    result = B.T.train(cfg, progress=False)
    assert all(np.isfinite(v) for v in result.losses.values())
    assert B.master_dtype(result.state) == np.float32  # master weights
    run = B.T.load_run(cfg.out_dir)
    actions = run.sample(np.zeros((3, 4)), seed=1)
    assert actions.shape == (3, 10, 2) and np.abs(actions).max() <= 1.0


def test_float64_flow_matching_sampler_uses_euler_steps(tmp_path, digits, B):
    cfg = _cfg(tmp_path, "fm", "steps=2", "method=flow_matching", "dtype=float64")
    result = B.T.train(cfg, dataset=digits, init_params=B.random_init(cfg, digits), progress=False)
    assert B.master_dtype(result.state) == np.float64
    sample = B.T.make_sampler(cfg, result.model, result.state)
    one, ten = sample(np.arange(4), num_steps=1), sample(np.arange(4), num_steps=10)
    assert one.shape == ten.shape == (4, 8, 8, 1) and not np.allclose(one, ten)


def test_config_fields_files_and_errors(tmp_path, capsys, B):
    from meanflow_common.train_cli import build_parser, parse_config
    from meanflow_common.train_config import config_to_dict, model_config

    cfg = apply_assignments(TRAIN_PRESETS["tiny"], ["optim.lr=3e-3", "omega=2", "model.depth=1", "steps=5"])
    assert (cfg.optim.lr, cfg.mf.omega, model_config(cfg).depth, cfg.steps) == (3e-3, 2.0, 1, 5)
    assert model_config(cfg).in_channels == 1  # the preset's own override survives
    with pytest.raises(KeyError, match="unknown config field 'depthh'"):
        apply_assignments(cfg, ["depthh=1"])
    with pytest.raises(KeyError, match="unknown field 'dit_dim' in section 'model'"):
        apply_assignments(cfg, ["model.dit_dim=8"])  # a FLOWER field on the digits DiT
    with pytest.raises(ValueError, match="needs task='reach'"):
        apply_assignments(cfg, ["method=regression"])

    path = tmp_path / "recipe.json"
    path.write_text('{"steps": 7, "optim": {"ema_decay": 0.5}, "model_overrides": {"depth": 3}}')
    args = build_parser("x").parse_args(["--preset", "tiny", "--config", str(path), "--set", "seed=4"])
    loaded = parse_config(args)
    assert (loaded.steps, loaded.optim.ema_decay, loaded.optim.lr, loaded.seed) == (7, 0.5, 1e-3, 4)
    assert (model_config(loaded).depth, model_config(loaded).in_channels) == (3, 1)  # merged over the preset
    path.write_text('{"stepz": 7}')
    with pytest.raises(KeyError, match="stepz"):
        parse_config(build_parser("x").parse_args(["--config", str(path)]))
    assert B.T.main(["--preset", "tiny", "--print-config"]) == 0
    assert '"in_channels": 1' in capsys.readouterr().out
    assert config_to_dict(cfg)["model_overrides"] == {"in_channels": 1, "depth": 1}


def test_progress_bar_counts_the_global_batch_and_the_devices():
    import io
    import re

    from meanflow_common.metrics import ProgressBar

    buf = io.StringIO()
    bar = ProgressBar(4, 0, every=2, stream=buf, batch_size=16, devices=2, processes=2)
    bar.update(1, 0.5)  # not a multiple of `every`: no line off a terminal
    bar.update(2, 0.5)
    m = re.fullmatch(r"step 2/4 loss 0\.5 ([\d.]+) steps/s ([\d.]+) samples/s \(2 devices, 2 processes\) "
                     r"elapsed \d+:\d\d eta \d+:\d\d\n", buf.getvalue())
    assert m, buf.getvalue()
    assert float(m.group(2)) == pytest.approx(16 * float(m.group(1)), rel=1e-2)


def test_a_lock_of_another_host_or_unreadable_is_refused_not_broken(tmp_path):
    from meanflow_common.run_lock import RunLock

    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match=r"pid 1 on elsewhere; lock file .*\.lock"):
        RunLock(str(tmp_path)).acquire()
    path.write_text("{not json")
    with pytest.raises(RunLockedError, match="an unknown trainer"):
        RunLock(str(tmp_path)).acquire()
    assert path.read_text() == "{not json"  # left for a person to judge
    path.unlink()
    with RunLock(str(tmp_path)):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
