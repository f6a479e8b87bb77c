"""Training methods as objects: the config's settings sections, the sampling knobs, the
registry, and iMF / pMF training and sampling in the PyTorch trainer (quick tier).

The cross-backend proof (JAX and PyTorch iMF / pMF training agree step by step, with negative
controls) is tests/test_train_methods_parity.py.
"""
import dataclasses

import numpy as np
import pytest
import torch

from meanflow_common.evaluate.cli import parse_sampling
from meanflow_common.imf_config import IMFDiTConfig, PMFDiTConfig
from meanflow_common.sampling import sampling_knobs
from meanflow_common.train_config import (TRAIN_PRESETS, TrainConfig, apply_assignments, config_from_dict,
                                          config_to_dict, model_config, objective_config)
from meanflow_common.train_methods import TrainMethod, get_method, register_method, unregister_method
from torch_meanflow import train as tt
from torch_meanflow.params import randomize_params


def test_the_method_picks_the_network_family_and_the_settings():
    imf, pmf = TRAIN_PRESETS["digits_imf"], TRAIN_PRESETS["digits_pmf"]
    assert type(model_config(imf)) is IMFDiTConfig and type(model_config(pmf)) is PMFDiTConfig
    assert objective_config(imf) is imf.imf and objective_config(pmf) is pmf.pmf
    assert model_config(imf).in_channels == 1 and model_config(imf).num_classes == 10
    # the same preset name under meanflow is the MeanFlow DiT
    assert type(model_config(apply_assignments(imf, ["method=meanflow"]))).__name__ == "DiTConfig"
    with pytest.raises(ValueError, match=r"method 'imf' is not a method of task 'reach'"):
        apply_assignments(TRAIN_PRESETS["tiny_reach"], ["method=imf"])
    with pytest.raises(ValueError, match=r"TrainConfig.method: unknown method 'imf2'; registered: .*imf"):
        TrainConfig(method="imf2")


def test_unprefixed_settings_go_to_the_methods_section():
    cfg = apply_assignments(TRAIN_PRESETS["tiny_imf"], ["num_steps=3", "cfg_max=2.5", "P_mean=-1.0"])
    assert (cfg.imf.num_steps, cfg.imf.cfg_max, cfg.imf.P_mean) == (3, 2.5, -1.0)
    assert cfg.mf == TRAIN_PRESETS["tiny_imf"].mf and cfg.pmf == TRAIN_PRESETS["tiny_imf"].pmf
    mf = apply_assignments(TRAIN_PRESETS["tiny"], ["num_steps=3"])
    assert mf.mf.num_steps == 3 and mf.imf.num_steps == 1
    # a setting the method does not read must be spelt out
    with pytest.raises(KeyError, match=r"'noise_scale' is a setting of pmf\. but method 'imf' reads imf\.; "
                                       r"write pmf\.noise_scale"):
        apply_assignments(TRAIN_PRESETS["tiny_imf"], ["noise_scale=2"])
    with pytest.raises(KeyError, match=r"'kappa' is a setting of mf\. but method 'pmf' reads pmf\."):
        apply_assignments(TRAIN_PRESETS["tiny_pmf"], ["kappa=0.3"])
    assert apply_assignments(TRAIN_PRESETS["tiny_imf"], ["pmf.noise_scale=2"]).pmf.noise_scale == 2.0
    # the method is applied first, so its section takes the unprefixed names of the same list
    assert apply_assignments(TRAIN_PRESETS["tiny"], ["num_steps=4", "method=imf", "model=tiny"]).imf.num_steps == 4
    with pytest.raises(ValueError, match=r"IMFConfig.cfg_max"):
        apply_assignments(TRAIN_PRESETS["tiny_imf"], ["cfg_max=-1"])
    with pytest.raises(ValueError, match=r"the trainers build no perceptual feature networks"):
        apply_assignments(TRAIN_PRESETS["tiny_pmf"], ["lpips=true"])


def test_settings_sections_round_trip_and_old_records_take_defaults():
    cfg = apply_assignments(TRAIN_PRESETS["tiny_pmf"], ["noise_scale=2.0", "sample_omega=3.5"])
    back = config_from_dict(config_to_dict(cfg))
    assert back == cfg and back.pmf.noise_scale == 2.0
    old = config_to_dict(TRAIN_PRESETS["tiny"])
    del old["imf"], old["pmf"]  # a run recorded before the iMF / pMF sections existed
    assert config_from_dict(old) == TRAIN_PRESETS["tiny"]
    with pytest.raises(TypeError, match=r"TrainConfig.imf=3 must be an object of fields"):
        config_from_dict({**old, "imf": 3})


def test_sampling_knobs_are_checked_and_completed():
    cfg = TRAIN_PRESETS["tiny_imf"]
    knobs = sampling_knobs(cfg, 3, {"omega": [1.0, 2.0, 3.0]})
    assert knobs["omega"].tolist() == [1.0, 2.0, 3.0]
    assert knobs["t_min"].tolist() == [cfg.imf.sample_t_min] * 3 and knobs["t_max"].shape == (3,)
    for given, match in (({"kappa": 1.0}, r"method 'imf' takes no sampling knob kappa \(it takes: omega, t_min"),
                         ({"omega": 0.5}, r"omega must be >= 1"),
                         ({"omega": [1.0, 2.0]}, r"omega must be a scalar or \[B\] = \(3,\), got shape \(2,\)"),
                         ({"t_min": 0.8, "t_max": 0.7}, r"t_min > t_max"),
                         ({"t_max": 1.5}, r"t_max must lie in \[0, 1\]"),
                         ({"omega": float("nan")}, r"omega holds NaN")):
        with pytest.raises(ValueError, match=match):
            sampling_knobs(cfg, 3, given)
    with pytest.raises(ValueError, match=r"method 'meanflow' takes no sampling knob omega \(it takes: none\)"):
        sampling_knobs(TRAIN_PRESETS["tiny"], 2, {"omega": 2.0})
    assert sampling_knobs(TRAIN_PRESETS["tiny"], 2) == {}


def test_evaluate_sampling_grid():
    grid = parse_sampling(["omega=1,2", "t_min=0.3"])
    assert grid == [{"omega": 1.0, "t_min": 0.3}, {"omega": 2.0, "t_min": 0.3}]
    assert parse_sampling([]) == [{}]
    for bad, match in ((["omega"], "not of the form"), (["omega=a"], "must be numbers"),
                       (["omega=1", "omega=2"], "names 'omega' twice")):
        with pytest.raises(ValueError, match=match):
            parse_sampling(bad)


def test_a_users_method_is_an_object_the_config_accepts():
    mine = TrainMethod(name="my_fm", settings="mf", hooks={"torch": tt.method_hooks(TRAIN_PRESETS["tiny"])})
    register_method(mine)
    try:
        assert get_method("my_fm") is mine
        with pytest.raises(ValueError, match="already registered"):
            register_method(TrainMethod(name="my_fm", settings="mf", hooks={}))
        with pytest.raises(ValueError, match="built in"):
            register_method(dataclasses.replace(get_method("imf")), replace=True)
        with pytest.raises(ValueError, match=r"method 'my_fm' has no jax hooks"):
            mine.backend_hooks("jax")
    finally:
        unregister_method("my_fm")


@pytest.mark.parametrize("preset", ["tiny_imf", "tiny_pmf"])
def test_torch_trains_and_samples_with_knobs(preset, tmp_path):
    torch.set_num_threads(1)
    cfg = apply_assignments(TRAIN_PRESETS[preset], [f"out_dir={tmp_path}", "steps=3", "log_every=0"])
    # fresh weights make every block the identity and u = v = 0: start from randomised ones
    start = randomize_params(tt.make_model(cfg), 3)
    result = tt.train(cfg, progress=False, init_params=start.state_dict())
    assert np.isfinite(result.metrics["loss"])
    moved = sum(float((a - b).abs().sum()) for a, b in zip(result.model.state_dict().values(),
                                                             start.state_dict().values()))
    assert moved > 1e-3
    sample = tt.make_sampler(cfg, result.model, result.state, use_ema=False)
    labels = np.array([0, 3, 7])
    base = sample(labels, seed=1)
    assert base.shape == (3, 8, 8, 1) and np.all(np.isfinite(base))
    np.testing.assert_array_equal(sample(labels, seed=1, omega=getattr(cfg, cfg.method).sample_omega), base)
    assert np.abs(sample(labels, seed=1, omega=1.0) - base).max() > 1e-6  # the knob reaches the network
    assert np.abs(sample(labels, seed=1, t_min=0.0, t_max=1.0) - base).max() > 1e-6
    with pytest.raises(ValueError, match="takes no sampling knob kappa"):
        sample(labels, kappa=1.0)


@pytest.mark.parametrize("preset, arch_name", [("tiny_imf", "imf-dit"), ("tiny_pmf", "pmf-dit")])
def test_the_trainers_loss_is_the_objective_the_parity_suite_checks(preset, arch_name):
    """The torch trainer's loss on its network equals the objective evaluated on the parity
    Arch's network (the official call: pMF's heads predict the clean image, the loss converts)
    with the same weights and randomness; a trainer feeding pMF's loss the network's own
    velocity outputs (converted twice) would fail here."""
    from parity.archs.registry import get_arch
    from torch_meanflow import imf_objective, pmf_objective
    from meanflow_common.data import batch_at
    from meanflow_common.tasks import get_dataset

    torch.set_num_threads(1)
    cfg = apply_assignments(TRAIN_PRESETS[preset], ["batch_size=6", "pmf.P_mean=-2.0"])
    model = randomize_params(tt.make_model(cfg), 5).double()
    arch_net = get_arch(arch_name).torch_build(model_config(cfg)).double()
    arch_net.load_state_dict(model.state_dict())
    np_batch = batch_at(get_dataset("digits", 0), 0, 0, 6)
    batch = {k: v.double() if v.is_floating_point() else v for k, v in tt.to_batch(cfg, np_batch).items()}
    noise = tt.step_randomness(cfg, 0, tuple(batch["x"].shape)).to(dtype=torch.float64)
    got = tt.make_loss_fn(cfg, model)(model, batch, noise).loss
    objective = imf_objective.imf_loss if cfg.method == "imf" else pmf_objective.pmf_loss
    want = objective(arch_net, batch["x"], batch["y"], noise, objective_config(cfg), null_y=10).loss
    assert float(want.detach()) > 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
