"""`python -m parity convert-run`: a run carried to the other backend resumes, samples and
evaluates there, and bad input writes nothing.

The loss-curve tests are well posed because both trainers consume one stream of randomness
(`parity.train_parity.shared_noise`, as the training parity does) from one initial state
(randomised torch weights, converted by the table): N steps on one backend, convert, M more
on the other must then follow N + M steps on the other backend to float32 rounding.
"""
import json
import os
import shutil
from dataclasses import replace

import jax
import numpy as np
import pytest
import torch

from jax_meanflow import train as jt
from meanflow_common.tasks import get_dataset
from meanflow_common.data import batch_at
from meanflow_common.train_cli import read_run_config
from meanflow_common.train_config import config_from_dict, model_config
from parity.archs.registry import get_arch
from parity.cli import main
from parity.convert import torch_to_jax
from parity.train_parity.convert_run import find_arch
from parity.train_parity.run import parity_config, shared_noise
from parity.train_parity.run_state import SIDES, JaxSide
from torch_meanflow import train as tt
from torch_meanflow.params import randomize_params

N, M = 3, 3


def _start(cfg, seed=1, jax_too=True):
    """(torch init state dict, the same weights as a Flax tree): randomised, no zero-init layer left."""
    example = batch_at(get_dataset(cfg.task, cfg.seed), cfg.seed, 0, cfg.batch_size)
    model = randomize_params(tt.make_model(cfg, example), seed)
    init_sd = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
    if not jax_too:
        return init_sd, None
    _, template = jt.make_model(cfg, example)
    tmpl = jax.tree.map(np.asarray, template)
    arch = find_arch(tmpl, {k: v.shape for k, v in init_sd.items()}, model_config(cfg))
    return init_sd, torch_to_jax(init_sd, arch.table, model_config(cfg), template=tmpl)


def _train(trainer, cfg, out, steps, init=None, resume=False):
    """`steps` updates of `trainer` in `out` (resume: the recipe of the run folder there), fed `shared_noise`."""
    run_cfg = replace(config_from_dict(read_run_config(out)) if resume else cfg, out_dir=out, steps=steps)
    jax_noise, torch_noise = shared_noise(run_cfg)
    return trainer.train(run_cfg, resume=resume, progress=False, init_params=init,
                         noise_fn=jax_noise if trainer is jt else torch_noise)


def _torch_params(result):
    return {k: v.detach().cpu().numpy() for k, v in result.state.model.state_dict().items()}


def _jax_params(result):
    return jax.tree.map(np.asarray, result.state.params)


def _as_torch(result, cfg):
    """A JAX run's weights under the torch names."""
    return SIDES["jax"].export(result.state, get_arch("dit").table, model_config(cfg)).params


def _rel(a: dict | list, b: dict | list) -> float:
    fa = np.concatenate([np.ravel(x) for x in (jax.tree.leaves(a))]).astype(np.float64)
    fb = np.concatenate([np.ravel(x) for x in (jax.tree.leaves(b))]).astype(np.float64)
    return float(np.linalg.norm(fa - fb) / np.linalg.norm(fb))


def _curve_gap(resumed, reference):
    """Largest relative gap of the per-step losses after the conversion."""
    return max(abs(resumed.losses[k] - reference.losses[k]) / abs(reference.losses[k]) for k in range(N + 1, N + M + 1))


# ---------------------------------------------------------------------------------------
# JAX -> torch and torch -> JAX: the loss curve continues
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    cfg = parity_config("float32", steps=N, batch_size=4)
    init_sd, init_jax = _start(cfg)
    runs = {"root": root, "cfg": cfg, "init_sd": init_sd, "init_jax": init_jax}
    runs["jax"] = _train(jt, cfg, str(root / "jax"), N, init_jax)
    runs["torch_ref"] = _train(tt, cfg, str(root / "torch_ref"), N + M, init_sd)
    runs["jax_ref"] = _train(jt, cfg, str(root / "jax_ref"), N + M, init_jax)
    # float32 rounding of the two frameworks, through Adam: the two trainers run straight
    runs["floor"] = _rel(_as_torch(runs["jax_ref"], cfg), _torch_params(runs["torch_ref"]))
    return runs


@pytest.mark.heavy
def test_jax_run_continues_in_torch(digits):
    root = digits["root"]
    assert main(["convert-run", str(root / "jax"), str(root / "to_torch")]) == 0
    resumed = _train(tt, None, str(root / "to_torch"), N + M, resume=True)
    ref = digits["torch_ref"]
    assert set(resumed.losses) == set(range(N + 1, N + M + 1))
    assert _curve_gap(resumed, ref) < 1e-5, _curve_gap(resumed, ref)
    # the weights: as close as the two trainers run straight (Adam amplifies float32 rounding)
    moved = _rel(_torch_params(ref), digits["init_sd"])
    gap = _rel(_torch_params(resumed), _torch_params(ref))
    assert moved > 1e-2 and gap < 2 * digits["floor"] + 1e-6, (gap, digits["floor"], moved)
    # the first N steps of the reference are the JAX run's, to float32 rounding too
    assert max(abs(digits["jax"].losses[k] - ref.losses[k]) / ref.losses[k] for k in range(1, N + 1)) < 1e-5


def _broken(monkeypatch, damage):
    original = JaxSide.export

    def export(self, state, table, mc):
        portable = original(self, state, table, mc)
        damage(portable)
        return portable

    monkeypatch.setattr(JaxSide, "export", export)


def _no_moments(p):
    p.mu = {k: np.zeros_like(v) for k, v in p.mu.items()}
    p.nu = {k: np.zeros_like(v) for k, v in p.nu.items()}


def _transposed_kernel(p):
    name = "blocks.0.attn.proj.weight"  # square: a transposed kernel still fits every shape
    p.params[name] = np.ascontiguousarray(p.params[name].T)


@pytest.mark.heavy
@pytest.mark.parametrize("damage", [_no_moments, _transposed_kernel])
def test_negative_control_a_broken_conversion_bends_the_curve(digits, monkeypatch, damage):
    root = digits["root"]
    dst = str(root / f"broken_{damage.__name__}")
    _broken(monkeypatch, damage)
    assert main(["convert-run", str(root / "jax"), dst]) == 0
    resumed = _train(tt, None, dst, N + M, resume=True)
    gap = _curve_gap(resumed, digits["torch_ref"])
    params_gap = _rel(_torch_params(resumed), _torch_params(digits["torch_ref"]))
    # far outside what a correct conversion gives (the bounds of test_jax_run_continues_in_torch)
    assert gap > 1e-3 and params_gap > 20 * digits["floor"], (gap, params_gap, digits["floor"])


@pytest.mark.heavy
def test_torch_run_continues_in_jax(digits, tmp_path):
    cfg, root = digits["cfg"], tmp_path
    first = _train(tt, cfg, str(root / "torch"), N, digits["init_sd"])
    assert first.losses == {k: digits["torch_ref"].losses[k] for k in range(1, N + 1)}  # one stream of randomness
    assert main(["convert-run", str(root / "torch"), str(root / "to_jax")]) == 0
    resumed = _train(jt, None, str(root / "to_jax"), N + M, resume=True)
    ref = digits["jax_ref"]
    assert _curve_gap(resumed, ref) < 1e-5, _curve_gap(resumed, ref)
    gap = _rel(_jax_params(resumed), _jax_params(ref))
    assert gap < 2 * digits["floor"] + 1e-6, (gap, digits["floor"])


@pytest.mark.heavy
def test_converted_runs_sample_and_evaluate_on_the_other_backend(digits, capsys):
    root = digits["root"]
    dst = str(root / "sampled")
    assert main(["convert-run", str(root / "jax"), dst]) == 0
    labels = np.arange(6) % 10
    x_src = jt.load_run(str(root / "jax")).sample(labels, seed=5)
    x_dst = tt.load_run(dst).sample(labels, seed=5)
    assert np.abs(x_src).max() > 0.1
    np.testing.assert_allclose(x_dst, x_src, rtol=1e-5, atol=1e-5)
    back = str(root / "back")
    assert main(["convert-run", dst, back]) == 0
    np.testing.assert_array_equal(jt.load_run(back).sample(labels, seed=5), x_src)  # the round trip is exact
    from torch_meanflow.evaluate import main as evaluate

    capsys.readouterr()
    assert evaluate(["--run", dst, "--n-per-class", "2", "--no-anchors", "--no-plots"]) == 0
    assert dst in capsys.readouterr().out


@pytest.mark.heavy
@pytest.mark.parametrize("first", ["jax", "torch"])
def test_a_reach_run_carries_both_ways(tmp_path, first):
    cfg = parity_config("float32", steps=2, batch_size=4, preset="tiny_reach")
    init_sd, init_jax = _start(cfg)
    trainer, other = (jt, tt) if first == "jax" else (tt, jt)
    _train(trainer, cfg, str(tmp_path / "src"), 2, init_jax if first == "jax" else init_sd)
    assert main(["convert-run", str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    assert json.load(open(tmp_path / "dst" / "converted.json"))["table"]["arch"] == "policy"
    obs = np.random.default_rng(0).uniform(-1, 1, (5, 4))
    x_src = trainer.load_run(str(tmp_path / "src")).sample(obs, seed=3)
    x_dst = other.load_run(str(tmp_path / "dst")).sample(obs, seed=3)
    assert np.abs(x_src).max() > 0.05
    np.testing.assert_allclose(x_dst, x_src, rtol=1e-5, atol=1e-5)
    assert _train(other, None, str(tmp_path / "dst"), 3, resume=True).step == 3


# ---------------------------------------------------------------------------------------
# What the converted folder holds; the optimizer state round trip; bad input
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_run")
    cfg = parity_config("float32", steps=2, batch_size=4, sets=["optim.warmup_steps=5", "optim.weight_decay=0.01"])
    init_sd, _ = _start(cfg, seed=2, jax_too=False)
    _train(tt, cfg, str(root / "src"), 2, init_sd)
    return root / "src"


def test_the_converted_folder_is_a_run_of_the_other_trainer(torch_run, tmp_path):
    dst = tmp_path / "jax_run"
    assert main(["convert-run", str(torch_run), str(dst)]) == 0
    src_cfg, dst_cfg = read_run_config(str(torch_run)), read_run_config(str(dst))
    assert dst_cfg["backend"] == "jax" and src_cfg["backend"] == "torch"
    assert set(dst_cfg["train"]) == set(src_cfg["train"])
    assert {k: v for k, v in dst_cfg["train"].items() if k != "out_dir"} == \
        {k: v for k, v in src_cfg["train"].items() if k != "out_dir"}
    assert dst_cfg["train"]["out_dir"] == str(dst) and dst_cfg["model"] == src_cfg["model"]
    record = json.load(open(dst / "converted.json"))
    assert record["converted_from"]["run"] == str(torch_run) and record["converted_from"]["step"] == 2
    assert record["converted_from"]["backend"] == "torch" and record["backend"] == "jax"
    assert record["table"]["arch"] == "dit" and len(record["table"]["rules_sha256"]) == 16
    assert "commit" in record["code"] and any("random" in n for n in record["not_carried"])
    assert open(dst / "metrics.csv").read() == open(torch_run / "metrics.csv").read()
    loaded = jt.load_run(str(dst))
    assert loaded.step == 2 and int(loaded.state.step) == 2
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]


def test_optimizer_state_round_trips_bit_for_bit(torch_run, tmp_path):
    """torch -> JAX -> torch: weights, EMA, Adam moments, step counts, lr and scheduler exactly."""
    (only,) = os.listdir(torch_run / "checkpoints")
    assert main(["convert-run", str(torch_run), str(tmp_path / "jax"), "--checkpoint",
                 str(torch_run / "checkpoints" / only)]) == 0
    assert main(["convert-run", str(tmp_path / "jax"), str(tmp_path / "torch")]) == 0
    (a,), (b,) = ([os.path.join(d, "checkpoints", n) for n in os.listdir(os.path.join(d, "checkpoints"))]
                  for d in (str(torch_run), str(tmp_path / "torch")))
    pa, pb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key in ("model", "ema"):
        assert pa[key].keys() == pb[key].keys()
        assert all(torch.equal(pa[key][k], pb[key][k]) for k in pa[key])
    sa, sb = pa["optimizer"]["state"], pb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) == len(pa["model"])
    for i in sa:
        assert set(sa[i]) == set(sb[i])
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i
    assert any(float(sa[i]["exp_avg"].abs().max()) > 0 for i in sa)  # moments that can be lost
    assert pa["optimizer"]["param_groups"] == pb["optimizer"]["param_groups"]
    assert pa["scheduler"] == pb["scheduler"] and pa["step"] == pb["step"] == 2
    assert pb["meta"]["backend"] == "torch" and pb["meta"]["data_position"] == 2
    # resumed, the run keeps its record; overwritten, it is no longer the converted run
    cfg = config_from_dict(read_run_config(str(tmp_path / "torch")))
    tt.train(replace(cfg, steps=3), resume=True, progress=False)
    assert (tmp_path / "torch" / "converted.json").exists()
    tt.train(replace(cfg, steps=1), overwrite=True, progress=False)
    assert not (tmp_path / "torch" / "converted.json").exists()


def _refused(capsys, args, word):
    capsys.readouterr()
    assert main(["convert-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and word in err, err
    return err


def test_a_source_that_is_no_run_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for src, word in ((tmp_path / "empty", "no config.json"), (tmp_path / "file", "a file"),
                      (tmp_path / "absent", "not found")):
        _refused(capsys, [str(src), str(tmp_path / "dst")], word)
        assert not (tmp_path / "dst").exists()
    assert sorted(os.listdir(tmp_path)) == ["empty", "file"]


def test_an_existing_destination_is_never_overwritten(torch_run, tmp_path, capsys):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    _refused(capsys, [str(torch_run), str(dst)], "not empty")
    assert os.listdir(dst) == ["notes.txt"] and (dst / "notes.txt").read_text() == "mine"
    _refused(capsys, [str(torch_run), str(dst / "notes.txt")], "is a file")
    assert main(["convert-run", str(torch_run), str(tmp_path / "empty_ok")]) == 0  # absent: written
    (tmp_path / "empty_dir").mkdir()
    assert main(["convert-run", str(torch_run), str(tmp_path / "empty_dir")]) == 0  # empty: written
    assert sorted(os.listdir(tmp_path)) == ["dst", "empty_dir", "empty_ok"]


def test_a_run_of_another_config_is_refused(torch_run, tmp_path, capsys):
    src = tmp_path / "other"
    shutil.copytree(torch_run, src)
    saved = json.load(open(src / "config.json"))
    saved["train"]["model_overrides"]["depth"] = 3
    json.dump(saved, open(src / "config.json", "w"))
    err = _refused(capsys, [str(src), str(tmp_path / "dst")], "blocks.2")
    assert "cannot be carried over" in err
    del saved["train"]["model_overrides"]["depth"]
    saved["train"]["optim"]["lr"] = 0.5
    json.dump(saved, open(src / "config.json", "w"))
    _refused(capsys, [str(src), str(tmp_path / "dst")], "optim.lr")
    saved["train"]["optim"]["lr"] = 0.001
    saved["backend"] = "mxnet"
    json.dump(saved, open(src / "config.json", "w"))
    _refused(capsys, [str(src), str(tmp_path / "dst")], "'mxnet'")
    assert not (tmp_path / "dst").exists() and sorted(os.listdir(tmp_path)) == ["other"]


def test_no_table_fits_a_network_of_its_own(torch_run, tmp_path, capsys, monkeypatch):
    from parity.archs import registry

    monkeypatch.setattr(registry, "_REGISTRY", {k: v for k, v in registry._REGISTRY.items() if k != "dit"})
    _refused(capsys, [str(torch_run), str(tmp_path / "dst")], "no conversion table fits")
    assert not (tmp_path / "dst").exists()


def test_a_corrupt_checkpoint_is_refused(torch_run, tmp_path, capsys):
    src = tmp_path / "torch_bad"
    shutil.copytree(torch_run, src)
    (path,) = [src / "checkpoints" / n for n in os.listdir(src / "checkpoints")]
    path.write_bytes(path.read_bytes()[:200])
    _refused(capsys, [str(src), str(tmp_path / "dst")], "ckpt_00000002.pt")
    assert main(["convert-run", str(torch_run), str(tmp_path / "jax_ok")]) == 0
    (tmp_path / "jax_ok" / "checkpoints" / "2" / "params" / "_METADATA").write_bytes(b"garbage")
    _refused(capsys, [str(tmp_path / "jax_ok"), str(tmp_path / "dst")], "params")
    assert not (tmp_path / "dst").exists()
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == ["jax_ok", "torch_bad"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]


def test_a_failed_write_leaves_nothing(torch_run, tmp_path, capsys, monkeypatch):
    from jax_meanflow import train as jax_train

    def full_disk(self, ckpt_dir, state, meta, keep_last):
        raise OSError(28, "No space left on device", ckpt_dir)

    monkeypatch.setattr(jax_train.JaxBackend, "save_checkpoint", full_disk)
    _refused(capsys, [str(torch_run), str(tmp_path / "new" / "deeper" / "dst")], "No space left")
    assert os.listdir(tmp_path) == []  # neither the run, nor its temporary folder, nor the folders above it
    monkeypatch.undo()
    assert main(["convert-run", str(torch_run), str(tmp_path / "new" / "deeper" / "dst")]) == 0
    assert os.listdir(tmp_path / "new" / "deeper") == ["dst"]
