"""The JAX and PyTorch trainers follow one trajectory; their checkpoints cross and sample the same.

The pair starts from randomised parameters (converted torch -> Flax), trains the tiny DiT
on the same digit batches with the same NumPy-drawn noise (`parity.train_parity`).
"""
import os

import jax
import numpy as np
import pytest
import torch

from jax_meanflow import train as jt
from jax_meanflow.train_state import create_train_state as jax_state
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments, model_config
from parity.archs.registry import get_arch
from parity.convert.checkpoints import load_params
from parity.convert import jax_to_torch, torch_to_jax
from parity.train_parity import parity_config, run_pair
from parity.convert.tables.dit import TABLE as DIT_TABLE
from parity.convert.tables.policy import TABLE as POLICY_TABLE
from torch_meanflow import train as tt
from torch_meanflow.params import randomize_params
from torch_meanflow.train_state import create_train_state as torch_state

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def pair64(tmp_path_factory):
    cfg = parity_config("float64", steps=50, batch_size=4)
    traj, results = run_pair(cfg, str(tmp_path_factory.mktemp("pair64")))
    return cfg, traj, results


def test_float64_trajectories_agree_for_50_steps(pair64):
    _, traj, _ = pair64
    assert len(traj.rel_params) == 50
    assert traj.moved > 1e-2  # the weights travelled: agreement is not a frozen start
    worst = traj.worst()
    for name in ("rel_loss", "rel_v_loss", "rel_grad_norm", "rel_params", "rel_ema"):
        assert worst[name] < 1e-8, (name, worst)


def _torch_state_with(cfg, state_dict, info=None):
    model = tt.make_model(cfg, info=info)
    state = torch_state(model, cfg.optim)
    with torch.no_grad():
        for m in (state.model, state.ema_model):
            m.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()})
    return model, state


def test_jax_checkpoint_samples_the_same_in_torch(pair64):
    cfg, _, results = pair64
    mc = model_config(cfg)
    run = results["jax"]
    ema = load_params(os.path.join(run.checkpoint, "ema_params"), get_arch("dit"), mc)
    model, state = _torch_state_with(cfg, jax_to_torch(ema, DIT_TABLE, mc))
    labels = np.arange(6) % 10
    for steps in (1, 2):
        x_jax = jt.make_sampler(cfg, run.model, run.state)(labels, num_steps=steps, seed=5)
        x_torch = tt.make_sampler(cfg, model, state)(labels, num_steps=steps, seed=5)
        assert np.abs(x_jax).max() > 0.1
        np.testing.assert_allclose(x_torch, x_jax, rtol=1e-10, atol=1e-10)


def test_torch_checkpoint_samples_the_same_in_jax(tmp_path):
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={tmp_path / 'torch'}", "steps=3"])
    model = randomize_params(tt.make_model(cfg), 2)
    result = tt.train(cfg, init_params=model.state_dict(), progress=False)
    mc = model_config(cfg)
    params = load_params(result.checkpoint, get_arch("dit"), mc)  # the file's "model" entry: the trained weights
    _, template = jt.make_model(cfg)
    state = jax_state(jax.tree.map(lambda a, t: np.asarray(a, t.dtype), params, template), cfg.optim)
    labels = np.array([0, 3, 7, 9])
    x_jax = jt.make_sampler(cfg, jt.make_model(cfg)[0], state, use_ema=False)(labels, seed=11)
    x_torch = tt.make_sampler(cfg, result.model, result.state, use_ema=False)(labels, seed=11)
    assert x_jax.dtype == np.float32 and np.abs(x_torch).max() > 0.1
    np.testing.assert_allclose(x_jax, x_torch, rtol=1e-4, atol=1e-5)


def test_torch_policy_checkpoint_samples_the_same_in_jax(tmp_path):
    cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / 'reach'}", "steps=2"])
    result = tt.train(cfg, progress=False)
    mc = model_config(cfg)
    payload = torch.load(result.checkpoint, weights_only=True)
    policy, template = jt.make_model(cfg, info={"obs_dim": 4})
    ema = torch_to_jax(payload["ema"], POLICY_TABLE, mc, template=template)
    state = jax_state(ema, cfg.optim)
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 4))
    x_jax = jt.make_sampler(cfg, policy, state)(obs, seed=3)
    x_torch = tt.make_sampler(cfg, result.model, result.state)(obs, seed=3)
    assert x_jax.shape == (5, 10, 2) and np.abs(x_torch).max() > 0.05
    np.testing.assert_allclose(x_jax, x_torch, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_reach_checkpoint_is_checked_and_converted_with_arch_policy(tmp_path, backend, capsys):
    """`--arch policy`: the reach trainers' checkpoints (the policy: transformer + encoder) go
    through `parity convert` and `parity --checkpoint` by the trainer preset's name."""
    from parity.cli import main

    trainer = tt if backend == "torch" else jt
    cfg = apply_assignments(TRAIN_PRESETS["tiny_reach"], [f"out_dir={tmp_path / 'reach'}", "steps=2"])
    result = trainer.train(cfg, progress=False)
    src = result.checkpoint if backend == "torch" else os.path.join(result.checkpoint, "ema_params")
    key = ["--checkpoint-key", "ema"] if backend == "torch" else []
    dst = str(tmp_path / ("policy" if backend == "torch" else "policy.safetensors"))
    assert main(["convert", src, dst, "--arch", "policy", "--preset", "tiny_reach", *key]) == 0
    back = str(tmp_path / ("back.safetensors" if backend == "torch" else "back"))
    assert main(["convert", dst, back, "--arch", "policy", "--preset", "tiny_reach"]) == 0
    a = load_params(src, get_arch("policy"), get_arch("policy").preset("tiny_reach"), key="ema" if key else None)
    b = load_params(back, get_arch("policy"), get_arch("policy").preset("tiny_reach"))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # bit for bit
    capsys.readouterr()
    args = ["--arch", "policy", "--preset", "tiny_reach", "--variant", "adaln", "--dtype", "float64",
            "--checkpoint", dst, "--trained-steps", "0", "--checks", "none"]
    assert main(args) == 0, capsys.readouterr()
    # the other preset's network is refused, naming the differing fields
    assert main(["convert", src, str(tmp_path / "x.safetensors"), "--arch", "policy", "--preset", "tiny", *key]) == 2
    assert "action_dim" in capsys.readouterr().err
