"""The training recipe shared by both trainers: `TrainConfig`, its presets, and the run folder.

`python -m jax_meanflow.train` and `python -m torch_meanflow.train` read the same
`TrainConfig` (pure Python, no framework import), so a recipe means the same thing on
both sides. A config is built from a preset (`TRAIN_PRESETS`), then an optional JSON file,
then `field=value` assignments; an assignment names a field of `TrainConfig`, of its
nested `OptimConfig` (`optim.`), of an objective's settings (`mf.` MeanFlowConfig, `imf.`
IMFConfig, `pmf.` PMFConfig), or of the model preset's config (`model.`: the task's preset
table for the method: `DiTConfig` for digits, `IMFDiTConfig` / `PMFDiTConfig` for digits
with imf / pmf, `FlowerConfig` for reach). The prefix may be left out for the optimiser, the
model and the settings section the run's method reads (`TrainMethod.settings`: mf for
meanflow, flow_matching and regression); a setting of another section must be prefixed.

Whatever depends on the task (its presets, methods, objective settings, batch and data
shape) is asked of its `meanflow_common.tasks.Task`, looked up by `TrainConfig.task`.
`check_batch` tells whether a batch of the data interface fits the configured model.
The run folder and the command line live in `meanflow_common.train_cli`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from meanflow_common.config import MeanFlowConfig, OptimConfig, from_dict, get_preset, override
from meanflow_common.fields import check_choice, check_range, check_types, parse_value
from meanflow_common.objective_configs import IMFConfig, PMFConfig
from meanflow_common.tasks import Task, get_task, registered_tasks
from meanflow_common.train_methods import TrainMethod, get_method, method_names

__all__ = [
    "METHODS",
    "DTYPES",
    "TrainConfig",
    "TRAIN_PRESETS",
    "model_config",
    "objective_config",
    "train_method",
    "apply_assignments",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "check_batch",
    "data_shape",
]

METHODS = method_names()  # the built-ins; a user's method joins the registry (meanflow_common.train_methods)
DTYPES = ("float32", "bfloat16", "float64")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    task: a registered task's name (`meanflow_common.tasks`; a registered `Task` is taken
    as its name): "digits" (class-conditional DiT on 8x8x1 images) or "reach" (FLOWER
    policy on action chunks [10, 2] given observations). model: preset name in the task's
    table (DIT_PRESETS for digits, FLOWER_PRESETS for reach); model_overrides: ((field,
    value), ...) applied to it. method: "meanflow", "flow_matching" (same network, h = 0,
    no JVP) or "regression" (tasks that list it, e.g. reach: MSE of one network call at
    z = 0, t = h = 1 against the data).
    dtype: "float32" (default), "bfloat16" (master weights, optimizer and EMA stay
    float32; the loss is computed with bfloat16 parameters and data) or "float64".
    steps: total updates; ckpt_every / log_every / eval_every: in updates (0 = only at
    the end); keep_last: checkpoints kept. obs_tokens, clip_actions: the reach policy's
    LowDimEncoder token count and whether sampled actions are clamped to [-1, 1] (the
    reach actions are normalised to that range). obs_noise: std of the Gaussian noise added
    to the conditioning observations of every training batch (0 = none; tasks with float
    conditioning only; `meanflow_common.data.augment`). fast_compile: JAX on CPU only, compile
    the train step without XLA's backend optimisations (about half the compile time,
    slower steps: for tests and smoke runs). torch_compile: PyTorch only, run the loss
    (forward and MeanFlow JVP) under torch.compile; on a 2-core CPU the MeanFlow step took
    0.59x eager's time on the small DiT and FLOWER, 0.82x on FLOWER base, 1.11x on a 6-block
    DiT, after 14-250 s of compilation (docs/BENCHMARKS.md); JAX always jits.
    devices: data-parallel devices. JAX: the size of the device mesh the global batch is
    sharded over (1 = one device, no mesh; 0 = every visible device). PyTorch: one device
    per torchrun process, so the count is torchrun's; devices must be 0, 1 or that count.
    batch_size is the global batch either way and must split evenly over the devices.
    sync_check_steps: for the first this many updates of a data-parallel run, check (by an
    all-gathered checksum) that every rank / device holds identical gradients and parameters
    after the update (0 = never).
    """

    task: str = "digits"
    model: str = "small"
    method: str = "meanflow"
    steps: int = 1000
    batch_size: int = 64
    seed: int = 0
    dtype: str = "float32"
    ckpt_every: int = 500
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 0
    out_dir: str = "runs/digits"
    obs_tokens: int = 4
    clip_actions: bool = True
    obs_noise: float = 0.0
    fast_compile: bool = False
    torch_compile: bool = False
    devices: int = 1
    sync_check_steps: int = 3
    model_overrides: tuple = ()
    optim: OptimConfig = field(default_factory=OptimConfig)
    mf: MeanFlowConfig = field(default_factory=MeanFlowConfig)
    imf: IMFConfig = field(default_factory=IMFConfig)
    pmf: PMFConfig = field(default_factory=PMFConfig)

    def __post_init__(self):
        pairs = tuple((str(k), v) for k, v in _pairs(self.model_overrides))
        object.__setattr__(self, "model_overrides", pairs)
        if isinstance(self.task, Task):
            object.__setattr__(self, "task", _registered_name(self.task))
        if isinstance(self.method, TrainMethod):
            object.__setattr__(self, "method", _registered_method(self.method))
        check_types(self)
        try:
            task = get_task(self.task)
        except ValueError as err:
            raise ValueError(f"TrainConfig.task: {err}") from None
        try:
            method = get_method(self.method)
        except ValueError as err:
            raise ValueError(f"TrainConfig.method: {err}") from None
        if not hasattr(self, method.settings):
            raise ValueError(f"method {method.name!r} reads TrainConfig.{method.settings}, which is not a field")
        if method.check is not None:
            method.check(getattr(self, method.settings))
        check_choice(self, "dtype", DTYPES)
        if self.method not in task.methods:
            having = [repr(n) for n, t in registered_tasks().items() if self.method in t.methods]
            raise ValueError(f"method {self.method!r} is not a method of task {self.task!r} "
                             f"({', '.join(task.methods)}); it needs task={' or '.join(having) or 'a task with it'}")
        for name in ("steps", "batch_size", "keep_last", "obs_tokens"):
            check_range(self, name, 1)
        for name in ("ckpt_every", "log_every", "eval_every"):
            check_range(self, name, 0, why="0 = only at the end")
        check_range(self, "obs_noise", 0.0, why="0 = no observation noise")
        if not math.isfinite(self.obs_noise):
            raise ValueError(f"TrainConfig.obs_noise={self.obs_noise!r} must be finite")
        if self.obs_noise > 0 and task.cond_key not in task.float_keys:
            raise ValueError(f"TrainConfig.obs_noise={self.obs_noise} needs float conditioning, but task "
                             f"{self.task!r} conditions on {task.cond_key!r}, which is not float")
        check_range(self, "devices", 0, why="0 = every visible device")
        check_range(self, "sync_check_steps", 0, why="0 = no cross-replica check")
        # JAX's PRNGKey keeps 32 bits without x64: larger seeds would collide silently
        check_range(self, "seed", 0, 2**32 - 1)
        if not self.out_dir.strip():
            raise ValueError("TrainConfig.out_dir is empty")
        model_config(self)  # an unknown model preset or field fails here, at construction


def _registered_name(task: Task) -> str:
    # a run folder records the task by name, so a loader finds it only if it is registered
    if registered_tasks().get(task.name) is not task:
        raise ValueError(f"TrainConfig.task: the Task {task.name!r} is not the one registered under its name; "
                         "register it first (meanflow_common.tasks.register_task)")
    return task.name


def _registered_method(method: TrainMethod) -> str:
    if get_method(method.name) is not method:
        raise ValueError(f"TrainConfig.method: the TrainMethod {method.name!r} is not the one registered under its "
                         "name; register it first (meanflow_common.train_methods.register_method)")
    return method.name


def _pairs(overrides) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    if isinstance(overrides, str) or not isinstance(overrides, (tuple, list)):
        raise TypeError(f"TrainConfig.model_overrides={overrides!r} must be a {{field: value}} object or "
                        "(field, value) pairs")
    out = []
    for item in overrides:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"model override {item!r} is not of the form field=value")
            item = tuple(s.strip() for s in item.split("=", 1))
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"model override {item!r} is not a (field, value) pair")
        out.append((item[0], item[1]))
    return out


def model_config(cfg: TrainConfig):
    """The resolved network config: the task's preset table (its table for cfg.method when
    the method trains another network family, `Task.method_presets`), `cfg.model`, the
    overrides."""
    task = get_task(cfg.task)
    table, kind = task.presets_for(cfg.method)
    of_method = "" if table is task.presets else f", method {cfg.method!r}"
    base = get_preset(table, cfg.model, f"{kind} (TrainConfig.model for task {cfg.task!r}{of_method})")
    return override(base, dict(cfg.model_overrides)) if cfg.model_overrides else base


def train_method(cfg: TrainConfig) -> TrainMethod:
    """The `TrainMethod` cfg.method names."""
    return get_method(cfg.method)


def objective_config(cfg: TrainConfig):
    """The objective settings the trainer uses: the method's settings section (MeanFlowConfig
    for meanflow / flow_matching / regression, IMFConfig, PMFConfig), as the task adjusts
    them where the method lets it (a task without class labels, e.g. reach, turns
    MeanFlow's guidance and class dropout off)."""
    method = get_method(cfg.method)
    settings = getattr(cfg, method.settings)
    return get_task(cfg.task).objective(settings) if method.task_adjusts else settings


# ----------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------

_FAST_OPTIM = OptimConfig(lr=1e-3, warmup_steps=100, grad_clip=1.0, ema_decay=0.999)
# The reach policy: 2-D velocity chunks of 10, no dropout (400 demonstrations, short runs),
# and time_scale 1: MeanFlow diverges with FLOWER's x1000 time-frequency scale (the
# h * du/dt term of its target grows with the scale; see docs/TRAINING.md).
_REACH_NET = (("action_dim", 2), ("act_window_size", 10), ("attn_pdrop", 0.0), ("resid_pdrop", 0.0),
              ("mlp_pdrop", 0.0), ("time_scale", 1.0))

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # tests: a 2-block DiT on 8x8x1 images, a few steps
    "tiny": TrainConfig(
        task="digits", model="tiny", model_overrides=(("in_channels", 1),), steps=8, batch_size=8,
        ckpt_every=4, log_every=1, out_dir="runs/tiny", fast_compile=True, optim=OptimConfig(lr=1e-3, ema_decay=0.9),
    ),
    # tests: a 2-layer FLOWER policy on action chunks [10, 2], no dropout
    "tiny_reach": TrainConfig(
        task="reach", model="tiny", steps=8, batch_size=8, ckpt_every=4, log_every=1, out_dir="runs/tiny_reach",
        fast_compile=True,
        model_overrides=_REACH_NET,
        optim=OptimConfig(lr=1e-3, ema_decay=0.9),
    ),
    # the digits run: DiT "small" (4 blocks, width 128, 16 tokens), CFG target as the reference
    "digits": TrainConfig(
        task="digits", model="small", steps=4000, batch_size=64, ckpt_every=1000, log_every=50,
        out_dir="runs/digits", optim=_FAST_OPTIM,
    ),
    # the digits run for a CPU budget (measured in docs/RESULTS.md): no guidance in the target
    # (the reference's omega 1, kappa 0.5 is an effective scale of 2, which costs recall at
    # 1 NFE), half the samples with r != t, a 4x larger rate and a short EMA for 1500 updates
    "digits_1nfe": TrainConfig(
        task="digits", model="small", steps=1500, batch_size=64, ckpt_every=500, log_every=50,
        out_dir="runs/digits_1nfe", optim=replace(_FAST_OPTIM, lr=4e-3, ema_decay=0.99),
        mf=MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5),
    ),
    # tests: improved MeanFlow / pixel MeanFlow on a 3-block iMF / pMF DiT (8x8x1 digits)
    "tiny_imf": TrainConfig(
        task="digits", method="imf", model="tiny", steps=8, batch_size=8, ckpt_every=4, log_every=1,
        out_dir="runs/tiny_imf", fast_compile=True, optim=OptimConfig(lr=1e-3, ema_decay=0.9),
        imf=IMFConfig(data_proportion=0.34, class_dropout_prob=0.3, sample_omega=2.0),
    ),
    "tiny_pmf": TrainConfig(
        task="digits", method="pmf", model="tiny", steps=8, batch_size=8, ckpt_every=4, log_every=1,
        out_dir="runs/tiny_pmf", fast_compile=True, optim=OptimConfig(lr=1e-3, ema_decay=0.9),
        pmf=PMFConfig(data_proportion=0.34, class_dropout_prob=0.3, tr_uniform=True, tr_uniform_prob=0.3,
                      sample_omega=2.0),
    ),
    # the digits runs of iMF and pMF: the digits_1nfe optimiser, a 4-block iMF / pMF DiT of width
    # 128 and half as many updates (each costs about twice a MeanFlow update: about the CPU time
    # of digits_1nfe). iMF: training guidance scales in [1, 2] rather than the official [1, 8]
    # and sampled without guidance by default (on digits the official range scored worse at
    # 1 NFE, docs/RESULTS.md); pMF: the official defaults (sampled at omega 8.5 by default).
    # The evaluator's --sampling sweeps omega and the interval.
    "digits_imf": TrainConfig(
        task="digits", method="imf", model="small", steps=750, batch_size=64, ckpt_every=250, log_every=50,
        out_dir="runs/digits_imf", optim=replace(_FAST_OPTIM, lr=4e-3, ema_decay=0.99),
        imf=IMFConfig(cfg_max=1.0, sample_omega=1.0),
    ),
    "digits_pmf": TrainConfig(
        task="digits", method="pmf", model="small", steps=750, batch_size=64, ckpt_every=250, log_every=50,
        out_dir="runs/digits_pmf", optim=replace(_FAST_OPTIM, lr=4e-3, ema_decay=0.99),
    ),
    # the reach run: FLOWER "small" as a policy for chunks [10, 2] of 2-D velocities
    "reach": TrainConfig(
        task="reach", model="small", steps=4000, batch_size=64, ckpt_every=1000, log_every=50,
        out_dir="runs/reach", optim=_FAST_OPTIM,
        model_overrides=_REACH_NET,
        mf=MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0),
    ),
    # the same policy with two-frame observations (position, goal, last displacement)
    "reach_history": TrainConfig(
        task="reach_history", model="small", steps=4000, batch_size=64, ckpt_every=1000, log_every=50,
        out_dir="runs/reach_history", optim=_FAST_OPTIM,
        model_overrides=_REACH_NET,
        mf=MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0),
    ),
}


# ----------------------------------------------------------------------------------
# Assignments by name, dicts and files
# ----------------------------------------------------------------------------------

_OBJECTIVES = {"mf": MeanFlowConfig, "imf": IMFConfig, "pmf": PMFConfig}  # the settings sections
_TOP = {f.name for f in fields(TrainConfig)} - {"optim", "model_overrides", *_OBJECTIVES}
_OPTIM = {f.name for f in fields(OptimConfig)}
_SETTINGS = {name: {f.name for f in fields(cls)} for name, cls in _OBJECTIVES.items()}


def _model_fields(cfg: TrainConfig) -> set[str]:
    return {f.name for f in fields(type(model_config(cfg)))}


def _split(item) -> tuple[str, Any]:
    if isinstance(item, str):
        if "=" not in item:
            raise ValueError(f"assignment {item!r} is not of the form field=value")
        key, value = item.split("=", 1)
        return key.strip(), value.strip()
    key, value = item
    return str(key), value


def _where(key: str, cfg: TrainConfig) -> tuple[str, str]:
    """(section, field) of an assignment key, with or without a section prefix. An unprefixed
    objective field that several settings sections share (P_mean, num_steps, ...) goes to
    the section of cfg.method."""
    valid = {"optim": _OPTIM, **_SETTINGS, "model": _model_fields(cfg)}
    if "." in key:
        section, name = key.split(".", 1)
        if section not in valid:
            raise KeyError(f"unknown section {section!r} in {key!r}; use {', '.join(s + '.' for s in valid)}")
        if name not in valid[section]:
            raise KeyError(f"unknown field {name!r} in section {section!r}; valid: {', '.join(sorted(valid[section]))}")
        return section, name
    active = get_method(cfg.method).settings
    for section in ("optim", active, "model"):
        if key in valid.get(section, ()):
            return section, key
    having = [s for s in _SETTINGS if key in _SETTINGS[s]]
    if having:  # a setting the run's method does not read: most likely a slip, so it must be spelt out
        raise KeyError(f"config field {key!r} is a setting of {' and '.join(s + '.' for s in having)} but method "
                       f"{cfg.method!r} reads {active}.; write {having[0]}.{key} to set it anyway")
    valid_names = sorted(_TOP | _OPTIM | set().union(*_SETTINGS.values()) | _model_fields(cfg))
    raise KeyError(f"unknown config field {key!r}; valid: {', '.join(valid_names)}")


def apply_assignments(cfg: TrainConfig, assignments: Sequence[str] | Mapping[str, Any]) -> TrainConfig:
    """A copy of `cfg` with each "field=value" (or {field: value}) applied, in order.

    Top-level fields go first (so `task=reach` decides which model fields exist); an
    unknown field or section raises KeyError naming it and listing the valid ones. The text
    of a "field=value" string is parsed as the field's type (`fields.parse_value`); the
    values of a mapping must already have it ({"steps": "4"} is refused, as in a JSON file).
    """
    if isinstance(assignments, Mapping):
        items = [(k, v, False) for k, v in assignments.items()]
    else:  # "field=value" strings are parsed as the field's type; (field, value) pairs are taken as typed
        items = [(*_split(a), isinstance(a, str)) for a in assignments]
    top = [(k, v, p) for k, v, p in items if k in _TOP]
    rest = [(k, v, p) for k, v, p in items if k not in _TOP]
    if top:
        hints = typing.get_type_hints(TrainConfig)
        changes = {k: (parse_value(v, hints[k], f"TrainConfig.{k}") if p else v) for k, v, p in top}
        cfg = _replace_top(cfg, changes)
    sections = {"optim": {}, **{name: {} for name in _OBJECTIVES}, "model": {}}
    for key, value, p in rest:
        section, name = _where(key, cfg)
        sections[section][name] = (value, p)
    for name in ("optim", *_OBJECTIVES):
        if sections[name]:
            cfg = replace(cfg, **{name: _typed(getattr(cfg, name), sections[name])})
    if sections["model"]:
        model = _typed(model_config(cfg), sections["model"])
        typed = dataclasses.asdict(model)  # "64" parsed to 64 and validated by the model config
        merged = {**dict(cfg.model_overrides), **{k: typed[k] for k in sections["model"]}}
        cfg = replace(cfg, model_overrides=tuple(merged.items()))
    return cfg


def _typed(section_cfg, assigned: dict):
    """`section_cfg` with the assigned {field: (value, parse)}: CLI text parsed, the rest as given."""
    if not assigned:
        return section_cfg
    section_cfg = override(section_cfg, [f"{k}={v}" for k, (v, p) in assigned.items() if p])
    return override(section_cfg, {k: v for k, (v, p) in assigned.items() if not p})


def _replace_top(cfg: TrainConfig, changes: dict) -> TrainConfig:
    if "task" in changes and changes["task"] != cfg.task:
        # the model overrides belong to the old task's network family
        changes.setdefault("model_overrides", ())
    return replace(cfg, **changes)


def config_to_dict(cfg: TrainConfig) -> dict:
    """JSON-ready dict; model_overrides as a {field: value} mapping."""
    out = dataclasses.asdict(cfg)
    out["model_overrides"] = dict(cfg.model_overrides)
    return out


def config_from_dict(data: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a (possibly partial) dict over `base` (default TrainConfig()).

    optim, mf and model_overrides are merged field by field over the base's (a task change
    drops the base's model overrides). Also accepts a run's config.json (the dict under its
    "train" key). Unknown keys raise.
    """
    if "train" in data and isinstance(data["train"], Mapping):
        data = data["train"]
    base = base or TrainConfig()
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise KeyError(f"unknown TrainConfig field(s) {unknown}; valid: {sorted(valid)}")
    sections = {"optim": OptimConfig, **_OBJECTIVES}
    changes = {k: v for k, v in data.items() if k not in sections}
    for section, cls in sections.items():
        if section not in data:
            continue
        if not isinstance(data[section], Mapping):
            raise TypeError(f"TrainConfig.{section}={data[section]!r} must be an object of fields")
        changes[section] = from_dict(cls, {**dataclasses.asdict(getattr(base, section)), **data[section]})
    same_family = changes.get("task", base.task) == base.task
    if "model_overrides" in changes:
        # merged over the base's overrides (a partial file keeps the preset's own ones)
        merged = dict(base.model_overrides) if same_family else {}
        merged.update(_pairs(changes["model_overrides"]))
        changes["model_overrides"] = tuple(merged.items())
    elif not same_family:
        changes["model_overrides"] = ()
    return replace(base, **changes)


def load_config_file(path: str, base: TrainConfig | None = None) -> TrainConfig:
    """Read a JSON config (partial TrainConfig dict, or a run's config.json) over `base`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(data, base)
    except (KeyError, TypeError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise type(err)(f"{path}: {msg}") from err


# ----------------------------------------------------------------------------------
# The data the model can take
# ----------------------------------------------------------------------------------


def data_shape(cfg: TrainConfig) -> tuple:
    """One generated example's shape in the data interface's layout (the task's
    `data_shape`): digits (H, W, C) (NHWC), reach (T, A)."""
    return tuple(get_task(cfg.task).data_shape(model_config(cfg)))


def check_batch(cfg: TrainConfig, model_cfg, batch: Mapping[str, Any]) -> None:
    """Check a NumPy batch of the data interface against the model; KeyError / ValueError /
    TypeError naming the problem. The task's batch_keys must be present with one batch
    size, its float_keys floating point, and the rest is the task's `check_batch`
    (digits: {"x": [B, H, W, C] NHWC float, "y": int [B]}; reach: {"obs": [B, D],
    "actions": [B, T, A]})."""
    task = get_task(cfg.task)
    keys = task.batch_keys
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"the {cfg.task} batch lacks {missing}; it has {sorted(batch)}")
    first = batch[keys[0]]
    b = first.shape[0] if getattr(first, "ndim", 0) else None
    for k in keys:
        if getattr(batch[k], "ndim", 0) == 0 or batch[k].shape[0] != b:
            raise ValueError(f"batch[{k!r}] has shape {getattr(batch[k], 'shape', None)}; every entry needs batch {b}")
    task.check_batch(model_cfg, batch)
    for k in task.float_keys:
        if batch[k].dtype.kind != "f":
            raise TypeError(f"batch[{k!r}] must be floating point, got dtype {batch[k].dtype}")
