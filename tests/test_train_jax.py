"""The JAX trainer: exact resume, NaN stop, run-folder safety, bad input, CLI, options.

Every run starts from randomised parameters (the DiT's zero-initialised layers would
make u == 0 at the first steps). The runs share one recipe ("tiny", fast_compile) so the
train step compiles once for the whole file.
"""
import dataclasses
import os

import jax
import numpy as np
import pytest

from jax_meanflow import train as T
from jax_meanflow.checkpoint import latest_checkpoint, restore_checkpoint
from jax_meanflow.params import randomize_params
from jax_meanflow.train_state import create_train_state
from meanflow_common.data import batch_at, get_dataset
from meanflow_common.metrics import NonFiniteLossError, read_metrics
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", 0)


def _cfg(tmp_path, name, *sets):
    return apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={tmp_path / name}", *sets])


def _random_init(cfg, dataset, seed=3):
    _, params = T.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
    return randomize_params(params, seed)


def _steps(ckpt_dir):
    return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def _files(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[p] = f.read()
    return out


def test_resume_repeats_the_uninterrupted_run(tmp_path, digits):
    cfg = _cfg(tmp_path, "full", "steps=6", "ckpt_every=2")
    init = _random_init(cfg, digits)
    full = T.train(cfg, dataset=digits, init_params=init, progress=False)

    part = dataclasses.replace(cfg, out_dir=str(tmp_path / "part"))

    def crash(state, step, run_dir):
        if step == 5:
            raise KeyboardInterrupt  # stopped between checkpoints 4 and 6
    with pytest.raises(KeyboardInterrupt):
        T.train(dataclasses.replace(part, eval_every=1), dataset=digits, init_params=init, eval_fn=crash,
                progress=False)
    assert _steps(os.path.join(part.out_dir, "checkpoints")) == [2, 4]
    resumed = T.train(part, dataset=digits, resume=True, progress=False)

    assert sorted(resumed.losses) == [5, 6]
    assert [resumed.losses[k] for k in (5, 6)] == [full.losses[k] for k in (5, 6)]
    rows_full = read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    rows_part = read_metrics(os.path.join(part.out_dir, "metrics.csv"))
    assert [r["step"] for r in rows_part] == [1, 2, 3, 4, 5, 6]  # rows 5.. of the crashed run dropped
    assert [r["loss"] for r in rows_part] == [r["loss"] for r in rows_full]
    assert len(set(r["loss"] for r in rows_full)) > 1  # a moving trajectory, not a constant
    for a, b in ((full.state.params, resumed.state.params), (full.state.ema_params, resumed.state.ema_params)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, digits):
    cfg = _cfg(tmp_path, "nan", "steps=8", "ckpt_every=2")

    def poisoned(dataset, seed, step, batch_size):
        batch = batch_at(dataset, seed, step, batch_size)
        if step == 4:  # the batch of update 5
            batch["x"][0, 0, 0, 0] = np.nan
        return batch

    with pytest.raises(NonFiniteLossError, match="at step 5") as err:
        T.train(cfg, dataset=digits, batch_fn=poisoned, init_params=_random_init(cfg, digits), progress=False)
    ckpt_dir = os.path.join(cfg.out_dir, "checkpoints")
    assert str(err.value).rstrip().endswith(os.path.join(ckpt_dir, "4"))
    assert _steps(ckpt_dir) == [2, 4]
    _, params = T.make_model(cfg, batch_at(digits, 0, 0, 8))
    state, meta = restore_checkpoint(latest_checkpoint(ckpt_dir), create_train_state(params, cfg.optim))
    assert int(state.step) == 4 and meta["data_position"] == 4
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(state.params))


def test_an_existing_run_is_refused_and_left_untouched(tmp_path, digits):
    cfg = _cfg(tmp_path, "run", "steps=2")
    T.train(cfg, dataset=digits, init_params=_random_init(cfg, digits), progress=False)
    before = _files(cfg.out_dir)
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        T.train(cfg, dataset=digits, progress=False)
    other = apply_assignments(cfg, ["hidden_size=32"])  # another architecture in the same folder
    with pytest.raises(ValueError, match="hidden_size"):
        T.train(other, dataset=digits, resume=True, progress=False)
    assert _files(cfg.out_dir) == before

    narrow = apply_assignments(cfg, ["hidden_size=32"])
    _, params = T.make_model(narrow, batch_at(digits, 0, 0, 8))
    with pytest.raises(ValueError, match=r"checkpoint params: .* has shape \(384,\), the model expects \(192,\)"):
        restore_checkpoint(latest_checkpoint(os.path.join(cfg.out_dir, "checkpoints")),
                           create_train_state(params, narrow.optim))


def test_bad_data_shape_is_a_clear_error_before_anything_is_written(tmp_path, digits):
    cfg = _cfg(tmp_path, "bad", "input_size=16")
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 1\] NHWC"):
        T.train(cfg, dataset=digits, progress=False)
    assert not os.path.exists(cfg.out_dir)

    def nchw(dataset, seed, step, batch_size):
        batch = batch_at(dataset, seed, step, batch_size)
        return {**batch, "x": batch["x"].transpose(0, 3, 1, 2)}

    with pytest.raises(ValueError, match="looks NCHW"):
        T.train(_cfg(tmp_path, "nchw"), dataset=digits, batch_fn=nchw, progress=False)


def test_cli_runs_resumes_and_rejects_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    assert T.main(["--preset", "tiny", "--set", f"out_dir={out}", "steps=2", "--no-progress"]) == 0
    assert sorted(os.listdir(out)) == ["checkpoints", "config.json", "loss.png", "metrics.csv"]
    assert T.main(["--resume", "--set", f"out_dir={out}", "steps=3", "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.csv")] == [1, 2, 3]
    assert T.main(["--preset", "tiny", "--set", f"out_dir={out}", "--no-progress"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    for bad in (["--bogus"], ["--preset", "nope"], ["--set", "bogus=1"], ["--set", "lr=abc"]):
        with pytest.raises(SystemExit) as exc:
            T.main(bad)
        assert exc.value.code == 2


def test_reach_policy_in_bfloat16(tmp_path):
    cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / 'reach'}", "steps=2",
                                                          "dtype=bfloat16", "n_layers=1"])
    result = T.train(cfg, progress=False)
    assert all(np.isfinite(v) for v in result.losses.values())
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(result.state.params))  # master weights
    run = T.load_run(cfg.out_dir)
    actions = run.sample(np.zeros((3, 4)), seed=1)
    assert actions.shape == (3, 10, 2) and np.abs(actions).max() <= 1.0


def test_flow_matching_sampler_uses_euler_steps(tmp_path, digits):
    cfg = _cfg(tmp_path, "fm", "steps=2", "method=flow_matching")
    result = T.train(cfg, dataset=digits, init_params=_random_init(cfg, digits), progress=False)
    sample = T.make_sampler(cfg, result.model, result.state)
    one, ten = sample(np.arange(4), num_steps=1), sample(np.arange(4), num_steps=10)
    assert one.shape == ten.shape == (4, 8, 8, 1) and not np.allclose(one, ten)
