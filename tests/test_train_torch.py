"""The PyTorch trainer: exact resume, NaN stop, run-folder safety, bad input, CLI, options.

Every run starts from randomised parameters (the DiT's zero-initialised layers would
make u == 0 at the first steps) and uses the built-in digits data with the "tiny" preset.
"""
import dataclasses
import os

import numpy as np
import pytest
import torch

from meanflow_common.data import batch_at, get_dataset
from meanflow_common.metrics import NonFiniteLossError, read_metrics
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments
from torch_meanflow import train as T
from torch_meanflow.checkpoint import latest_checkpoint, list_checkpoints, restore_checkpoint
from torch_meanflow.params import randomize_params
from torch_meanflow.train_state import create_train_state


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", 0)


def _cfg(tmp_path, name, *sets):
    return apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={tmp_path / name}", *sets])


def _random_init(cfg, dataset, seed=3):
    model = T.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
    return {k: v.clone() for k, v in randomize_params(model, seed).state_dict().items()}


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
    assert [s for s, _ in list_checkpoints(os.path.join(part.out_dir, "checkpoints"))] == [2, 4]
    resumed = T.train(part, dataset=digits, resume=True, progress=False)

    assert sorted(resumed.losses) == [5, 6]
    assert [resumed.losses[k] for k in (5, 6)] == [full.losses[k] for k in (5, 6)]
    rows_full = read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    rows_part = read_metrics(os.path.join(part.out_dir, "metrics.csv"))
    assert [r["step"] for r in rows_part] == [1, 2, 3, 4, 5, 6]  # rows 5.. of the crashed run dropped
    assert [r["loss"] for r in rows_part] == [r["loss"] for r in rows_full]
    assert len(set(r["loss"] for r in rows_full)) > 1  # a moving trajectory, not a constant
    for a, b in ((full.state.model, resumed.state.model), (full.state.ema_model, resumed.state.ema_model)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name


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
    assert "ckpt_00000004.pt" in str(err.value)
    assert [s for s, _ in list_checkpoints(ckpt_dir)] == [2, 4]
    state = create_train_state(T.make_model(cfg, batch_at(digits, 0, 0, 8)), cfg.optim)
    state, meta = restore_checkpoint(latest_checkpoint(ckpt_dir), state)
    assert state.step == 4 and meta["data_position"] == 4
    assert all(torch.isfinite(p).all() for p in state.model.parameters())


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


def test_bad_data_shape_and_foreign_checkpoint_are_clear_errors(tmp_path, digits):
    cfg = _cfg(tmp_path, "bad", "input_size=16")
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 1\] NHWC"):
        T.train(cfg, dataset=digits, progress=False)
    assert not os.path.exists(cfg.out_dir)  # nothing written

    def nchw(dataset, seed, step, batch_size):
        batch = batch_at(dataset, seed, step, batch_size)
        return {**batch, "x": batch["x"].transpose(0, 3, 1, 2)}

    with pytest.raises(ValueError, match="looks NCHW"):
        T.train(_cfg(tmp_path, "nchw"), dataset=digits, batch_fn=nchw, progress=False)

    good = _cfg(tmp_path, "good", "steps=1")
    T.train(good, dataset=digits, init_params=_random_init(good, digits), progress=False)
    narrow = apply_assignments(good, ["hidden_size=32"])
    state = create_train_state(T.make_model(narrow, batch_at(digits, 0, 0, 8)), narrow.optim)
    with pytest.raises(ValueError, match="x_embedder.proj.weight"):
        restore_checkpoint(latest_checkpoint(os.path.join(good.out_dir, "checkpoints")), state)


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


def test_warmup_schedule_and_grad_norm_reach_the_csv(tmp_path, digits):
    cfg = _cfg(tmp_path, "warm", "steps=4", "warmup_steps=2", "grad_clip=0.5")
    T.train(cfg, dataset=digits, init_params=_random_init(cfg, digits), progress=False)
    rows = read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    np.testing.assert_allclose([r["lr"] for r in rows], [0.0, 5e-4, 1e-3, 1e-3])
    assert all(r["grad_norm"] > 0 and np.isfinite(r["v_loss"]) and r["steps_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["meanflow", "regression"])
def test_reach_policy_in_bfloat16(tmp_path, method):
    cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / method}", "steps=2",
                                                          "dtype=bfloat16", f"method={method}"])
    result = T.train(cfg, progress=False)
    assert all(np.isfinite(v) for v in result.losses.values())
    assert all(p.dtype == torch.float32 for p in result.state.model.parameters())  # master weights
    run = T.load_run(cfg.out_dir)
    actions = run.sample(np.zeros((3, 4)), seed=1)
    assert actions.shape == (3, 10, 2) and np.abs(actions).max() <= 1.0


def test_float64_and_flow_matching_samplers(tmp_path, digits):
    cfg = _cfg(tmp_path, "fm", "steps=2", "dtype=float64", "method=flow_matching")
    result = T.train(cfg, dataset=digits, init_params=_random_init(cfg, digits), progress=False)
    assert all(p.dtype == torch.float64 for p in result.state.model.parameters())
    sample = T.make_sampler(cfg, result.model, result.state)
    one, ten = sample(np.arange(4), num_steps=1), sample(np.arange(4), num_steps=10)
    assert one.shape == ten.shape == (4, 8, 8, 1) and not np.allclose(one, ten)


def test_config_fields_files_and_errors(tmp_path, capsys):
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
    assert T.main(["--preset", "tiny", "--print-config"]) == 0
    assert '"in_channels": 1' in capsys.readouterr().out
    assert config_to_dict(cfg)["model_overrides"] == {"in_channels": 1, "depth": 1}
