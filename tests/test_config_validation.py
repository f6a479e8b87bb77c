"""Every config field is type- and range-checked once, in meanflow_common, whichever way the
config is built (command-line assignment, JSON file, Python); the message names the field and
the value. Framework-free: no backend is imported."""
from __future__ import annotations

import dataclasses
import json

import pytest

from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS, DiTConfig, FlowerConfig, MeanFlowConfig, OptimConfig
from meanflow_common.train_cli import build_parser, parse_config
from meanflow_common.train_config import TRAIN_PRESETS, TrainConfig, apply_assignments, config_from_dict

# (assignment, words the error must contain): out-of-range values that an older version accepted
# (or crashed on) on at least one backend
RANGE_CASES = [
    ("lr=-1e-3", "OptimConfig.lr=-0.001"),
    ("lr=0", "OptimConfig.lr=0.0"),
    ("b1=-0.1", "OptimConfig.b1"),
    ("b2=1.5", "OptimConfig.b2=1.5"),
    ("b2=1", "OptimConfig.b2=1.0"),
    ("eps=-1e-8", "OptimConfig.eps"),
    ("weight_decay=-0.1", "OptimConfig.weight_decay"),
    ("ema_decay=2", "OptimConfig.ema_decay=2.0"),
    ("ema_decay=-0.5", "OptimConfig.ema_decay"),
    ("grad_clip=-1", "OptimConfig.grad_clip=-1.0"),
    ("warmup_steps=-5", "OptimConfig.warmup_steps=-5"),
    ("lr=nan", "OptimConfig.lr=nan"),
    ("lr=inf", "OptimConfig.lr=inf"),
    ("norm_eps=-0.01", "MeanFlowConfig.norm_eps"),
    ("norm_p=-1", "MeanFlowConfig.norm_p"),
    ("P_std=0", "MeanFlowConfig.P_std"),
    ("omega=-1", "MeanFlowConfig.omega"),
    ("kappa=-0.5", "MeanFlowConfig.kappa"),
    ("t_start=0.8 t_end=0.2", "t_start=0.8 > t_end=0.2"),
    ("t_end=1.5", "MeanFlowConfig.t_end"),
    ("data_proportion=nan", "MeanFlowConfig.data_proportion=nan"),
    ("mf.num_steps=0", "MeanFlowConfig.num_steps=0"),
    ("model.depth=0", "DiTConfig.depth=0"),
    ("model.patch_size=0", "DiTConfig.patch_size=0"),
    ("model.num_heads=0", "DiTConfig.num_heads=0"),
    ("model.num_heads=3", "hidden_size=64 is not a multiple of num_heads=3"),
    ("model.patch_size=3", "input_size=8 is not a multiple of patch_size=3"),
    ("model.mlp_ratio=0", "DiTConfig.mlp_ratio"),
    ("model.num_classes=0", "DiTConfig.num_classes"),
    ("steps=0", "TrainConfig.steps=0"),
    ("batch_size=-4", "TrainConfig.batch_size"),
    ("ckpt_every=-1", "TrainConfig.ckpt_every"),
    ("seed=-1", "TrainConfig.seed=-1"),
    ("seed=4294967296", "TrainConfig.seed=4294967296"),  # JAX's PRNGKey would wrap it to seed 0
    ("out_dir=", "TrainConfig.out_dir"),
]

REACH_RANGE_CASES = [
    ("model.n_heads=0", "FlowerConfig.n_heads=0"),
    ("model.attn_pdrop=1", "FlowerConfig.attn_pdrop=1.0"),
    ("model.mlp_pdrop=-0.1", "FlowerConfig.mlp_pdrop"),
    ("model.time_scale=0", "FlowerConfig.time_scale"),
    ("model.rope_theta=-1", "FlowerConfig.rope_theta"),
    ("model.decoder_hidden_dim=-1", "FlowerConfig.decoder_hidden_dim"),
    ("model.dit_dim=33", "dit_dim=33 is not a multiple of n_heads=2"),
    ("model.dit_dim=30", "RoPE needs an even head dim"),
]


@pytest.mark.parametrize("sets, words", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_out_of_range_assignments_are_refused_naming_the_field(sets, words):
    with pytest.raises(ValueError) as err:
        apply_assignments(TRAIN_PRESETS["tiny"], sets.split(" "))
    assert words in str(err.value)


@pytest.mark.parametrize("sets, words", REACH_RANGE_CASES, ids=[c[0] for c in REACH_RANGE_CASES])
def test_out_of_range_policy_fields_are_refused(sets, words):
    with pytest.raises(ValueError) as err:
        apply_assignments(TRAIN_PRESETS["tiny_reach"], [sets])
    assert words in str(err.value)


# (JSON file content, words the error must contain)
FILE_CASES = [
    ({"steps": "4"}, "TrainConfig.steps='4' (str) is not of the expected type int"),
    ({"steps": 2.5}, "TrainConfig.steps=2.5 (float)"),
    ({"batch_size": 8.0}, "TrainConfig.batch_size=8.0 (float)"),
    ({"steps": True}, "TrainConfig.steps=True (bool)"),
    ({"optim": {"lr": "fast"}}, "OptimConfig.lr='fast' (str) is not of the expected type float"),
    ({"torch_compile": "false"}, "TrainConfig.torch_compile='false' (str) is not of the expected type bool"),
    ({"clip_actions": "no"}, "TrainConfig.clip_actions='no'"),
    ({"fast_compile": 0}, "TrainConfig.fast_compile=0 (int)"),
    ({"mf": {"clip_h": "true"}}, "MeanFlowConfig.clip_h='true'"),
    ({"mf": {"noise_dist": 3}}, "MeanFlowConfig.noise_dist=3"),
    ({"model_overrides": {"depth": "4"}}, "DiTConfig.depth='4' (str)"),
    ({"model_overrides": {"depht": 4}}, "unknown field 'depht' for DiTConfig"),
    ({"model_overrides": "depth=4"}, "TrainConfig.model_overrides='depth=4'"),
    ({"optim": 3}, "TrainConfig.optim=3 must be an object"),
    ({"optim": {"ema_decay": 2}}, "OptimConfig.ema_decay=2.0"),
    ({"optim": {"lr_": 1.0}}, "unknown field(s) ['lr_'] for OptimConfig"),
]


@pytest.mark.parametrize("data, words", FILE_CASES, ids=[json.dumps(c[0]) for c in FILE_CASES])
def test_config_files_are_type_checked_naming_file_field_value_and_type(tmp_path, data, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises((KeyError, TypeError, ValueError)) as err:
        parse_config(build_parser("x").parse_args(["--preset", "tiny", "--config", str(path)]))
    msg = str(err.value.args[0])
    assert words in msg and str(path) in msg


# command-line values that do not parse as the field's type
PARSE_CASES = [
    ("steps=2.5", "TrainConfig.steps='2.5': expected int"),
    ("steps=8.0", "TrainConfig.steps='8.0': expected int"),
    ("steps=four", "TrainConfig.steps='four'"),
    ("lr=fast", "OptimConfig.lr='fast': expected float"),
    ("torch_compile=yes", "TrainConfig.torch_compile='yes': expected a bool (true/false/1/0)"),
    ("clip_h=off", "MeanFlowConfig.clip_h='off'"),
    ("model.depth=2.0", "DiTConfig.depth='2.0': expected int"),
]


@pytest.mark.parametrize("sets, words", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_command_line_values_that_do_not_parse_are_refused(sets, words):
    with pytest.raises(ValueError) as err:
        apply_assignments(TRAIN_PRESETS["tiny"], [sets])
    assert words in str(err.value)


@pytest.mark.parametrize("word, value", [("true", True), ("True", True), ("1", True), ("false", False),
                                         ("FALSE", False), ("0", False)])
def test_command_line_bools_are_true_false_1_0(word, value):
    assert apply_assignments(TRAIN_PRESETS["tiny"], [f"torch_compile={word}"]).torch_compile is value


def test_good_values_keep_their_types():
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], ["lr=2e-3", "omega=2", "steps=12", "model.depth=3"])
    assert (type(cfg.optim.lr), type(cfg.mf.omega), cfg.steps) == (float, float, 12)
    cfg = config_from_dict({"optim": {"lr": 1}, "mf": {"omega": 2}}, TRAIN_PRESETS["tiny"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and isinstance(cfg.mf.omega, float)


@pytest.mark.parametrize("cls, field, value", [
    (OptimConfig, "lr", -1.0), (MeanFlowConfig, "norm_eps", -1.0), (DiTConfig, "depth", 0),
    (FlowerConfig, "n_heads", 0), (TrainConfig, "keep_last", 0), (DiTConfig, "depth", 2.0),
])
def test_direct_construction_is_checked_too(cls, field, value):
    with pytest.raises((TypeError, ValueError), match=f"{cls.__name__}.{field}"):
        cls(**{field: value})


def test_every_preset_is_valid_and_defaults_pass():
    for table in (DIT_PRESETS, FLOWER_PRESETS, TRAIN_PRESETS):
        for cfg in table.values():
            dataclasses.replace(cfg)  # re-runs the checks
    for cls in (OptimConfig, MeanFlowConfig, DiTConfig, FlowerConfig, TrainConfig):
        cls()
