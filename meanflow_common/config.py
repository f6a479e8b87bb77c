"""Configuration dataclasses shared by both backends (pure Python, no framework import).

`jax_meanflow.config` and `torch_meanflow.config` re-export this module, so the two
backends read the same field names and the same defaults by construction.

Defaults follow `configs/default.py` of the official JAX MeanFlow code. The PyTorch
reference (py-meanflow) differs in a few places; those differences are options whose
defaults keep the JAX semantics.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from meanflow_common.fields import check_choice, check_multiple, check_range, check_types, parse_value

# ----------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------

NOISE_DISTS = ("logit_normal", "uniform")
GUIDANCE_EQS = ("cfg", "")
RT_MASKS = ("first", "random")  # which samples get r = t
TR_SAMPLERS = ("v0", "v1")  # py-meanflow: v0 order then mask, v1 mask then r = min(t, r)
TIME_PARAMS = ("P_mean_t", "P_std_t", "P_mean_r", "P_std_r")
TANGENTS = ("guided", "v")  # tangent of z in the JVP: v_g (JAX) or plain v (py-meanflow)
JVP_PATHS = ("jvp", "memory_saving")


@dataclass(frozen=True)
class MeanFlowConfig:
    """Hyperparameters of the MeanFlow objective.

    Every number the loss uses lives here; the loss functions take this object.
    """

    noise_dist: str = "logit_normal"
    P_mean: float = -0.4
    P_std: float = 1.0
    # t and r each from their own logit-normal (py-meanflow: t (-0.6, 1.6), r (-4.0, 1.6)).
    # None means "the same as P_mean / P_std" (the JAX reference: one distribution for
    # both); read them through `time_dist_params`, the one place None is resolved.
    P_mean_t: float | None = None
    P_std_t: float | None = None
    P_mean_r: float | None = None
    P_std_r: float | None = None
    data_proportion: float = 0.75
    guidance_eq: str = "cfg"
    omega: float = 1.0
    kappa: float = 0.5
    t_start: float = 0.0
    t_end: float = 1.0
    class_dropout_prob: float = 0.1
    norm_p: float = 1.0
    norm_eps: float = 0.01
    # Options of the PyTorch reference (py-meanflow); defaults = JAX semantics.
    clip_h: bool = True  # clip(t - r, 0, 1) in the target (py-meanflow: no clip)
    rt_mask: str = "first"  # "first": first floor(B * p) samples; "random": each w.p. p
    tr_sampler: str = "v0"  # only with rt_mask="random"
    tangent: str = "guided"
    jvp_path: str = "jvp"  # "memory_saving": du/dt under no_grad + separate forward (torch)
    # Sampling
    num_steps: int = 1

    def __post_init__(self):
        check_types(self)
        for name, choices in (("noise_dist", NOISE_DISTS), ("guidance_eq", GUIDANCE_EQS), ("rt_mask", RT_MASKS),
                              ("tr_sampler", TR_SAMPLERS), ("tangent", TANGENTS), ("jvp_path", JVP_PATHS)):
            check_choice(self, name, choices)
        check_range(self, "P_std", 0.0, lo_open=True, why="the logit-normal's scale")
        for name in ("data_proportion", "class_dropout_prob", "t_start", "t_end"):
            check_range(self, name, 0.0, 1.0)
        check_range(self, "omega", 0.0)
        check_range(self, "kappa", 0.0)
        if self.t_start > self.t_end:
            raise ValueError(f"MeanFlowConfig.t_start={self.t_start} > t_end={self.t_end}: the guidance window "
                             "[t_start, t_end] would be empty")
        check_range(self, "norm_p", 0.0)
        check_range(self, "norm_eps", 0.0)
        check_range(self, "num_steps", 1)
        for name in TIME_PARAMS:  # None: the same as P_mean / P_std
            if getattr(self, name) is not None and name.startswith("P_std"):
                check_range(self, name, 0.0, lo_open=True, why="the logit-normal's scale")

    def time_dist_params(self, which: str) -> tuple[float, float]:
        """(mean, std) of the logit-normal that draws `which` ("t" or "r").

        P_mean_t / P_std_t / P_mean_r / P_std_r when set, else P_mean / P_std.
        """
        if which not in ("t", "r"):
            raise ValueError(f"time_dist_params: which must be 't' or 'r', got {which!r}")
        mean, std = getattr(self, f"P_mean_{which}"), getattr(self, f"P_std_{which}")
        return (float(self.P_mean if mean is None else mean), float(self.P_std if std is None else std))


# ----------------------------------------------------------------------------------
# The image network (DiT of the JAX reference)
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiTConfig:
    """DiT hyperparameters. Defaults: DiT-B/4 on 32x32x4 latents."""

    input_size: int = 32
    patch_size: int = 4
    in_channels: int = 4
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    frequency_embedding_size: int = 256

    def __post_init__(self):
        check_types(self)
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes",
                     "frequency_embedding_size"):
            check_range(self, name, 1)
        check_range(self, "mlp_ratio", 0.0, lo_open=True)
        check_multiple(self, "input_size", "patch_size")
        check_multiple(self, "hidden_size", "num_heads")
        if self.hidden_size % 4:
            raise ValueError(f"DiTConfig.hidden_size={self.hidden_size} is not a multiple of 4 "
                             "(2-D sin-cos position embedding)")
        if int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"DiTConfig.mlp_ratio={self.mlp_ratio} leaves the MLP no hidden unit "
                             f"(hidden_size {self.hidden_size})")


_DIT_SIZES = {  # name: (depth, hidden_size, num_heads), as in the reference's models_dit.py
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "M": (16, 1024, 16),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}

DIT_PRESETS: dict[str, DiTConfig] = {
    f"DiT-{size}/{p}": DiTConfig(depth=d, hidden_size=w, num_heads=h, patch_size=p)
    for size, (d, w, h) in _DIT_SIZES.items()
    for p in (2, 4, 8)
}
# Tiny presets for tests and the default parity suite.
DIT_PRESETS["tiny"] = DiTConfig(
    input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10
)
# Small preset used by the parity suite and the digits trainer (8x8x1 images).
DIT_PRESETS["small"] = DiTConfig(
    input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4, num_heads=4, num_classes=10
)


# ----------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + EMA as in the JAX reference (lr 1e-4, b2 0.95, no weight decay, EMA 0.9999)."""

    lr: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm clip; 0 = off
    warmup_steps: int = 0
    ema_decay: float = 0.9999

    def __post_init__(self):
        check_types(self)
        check_range(self, "lr", 0.0, lo_open=True)
        for name in ("b1", "b2"):
            check_range(self, name, 0.0, 1.0, hi_open=True)
        for name in ("eps", "weight_decay", "warmup_steps"):
            check_range(self, name, 0)
        check_range(self, "grad_clip", 0.0, why="0 turns the clip off")
        check_range(self, "ema_decay", 0.0, 1.0)


# ----------------------------------------------------------------------------------
# Presets, overrides by field name, config files
# ----------------------------------------------------------------------------------


def get_preset(table: Mapping[str, Any], name: str, what: str = "preset"):
    """Look up `name` in a preset table; an unknown name is an error listing the choices."""
    if name not in table:
        raise KeyError(f"unknown {what} {name!r}; available: {', '.join(sorted(table))}")
    return table[name]


def override(cfg, assignments: Sequence[str] | Mapping[str, Any]):
    """Return a copy of the frozen dataclass `cfg` with fields replaced by name.

    `assignments` is either a mapping {field: value} (values of the field's type, as in a
    JSON file: "4" for an int field is refused) or strings "field=value" (CLI form: the value
    is parsed as the field's type, see `meanflow_common.fields.parse_value`). An unknown
    field is an error that names it and lists the valid ones.
    """
    names = {f.name: f for f in fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    parse = not isinstance(assignments, Mapping)
    if not parse:
        items = list(assignments.items())
    else:
        if isinstance(assignments, str):
            assignments = [assignments]
        items = []
        for a in assignments:
            if not isinstance(a, str) or "=" not in a:
                raise ValueError(f"override {a!r} is not of the form field=value")
            k, v = a.split("=", 1)
            items.append((k.strip(), v.strip()))
    changes = {}
    for key, value in items:
        if key not in names:
            raise KeyError(
                f"unknown field {key!r} for {type(cfg).__name__}; valid: {', '.join(sorted(names))}"
            )
        changes[key] = parse_value(value, hints[key], f"{type(cfg).__name__}.{key}") if parse else value
    return replace(cfg, **changes)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: Mapping[str, Any]):
    """Build `cls` from a dict; unknown keys are an error naming them."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{cls.__name__} needs a JSON object of fields, got {type(data).__name__} {data!r}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise KeyError(f"unknown field(s) {unknown} for {cls.__name__}; valid: {sorted(valid)}")
    return cls(**data)


__all__ = [
    "MeanFlowConfig",
    "DiTConfig",
    "DIT_PRESETS",
    "OptimConfig",
    "get_preset",
    "override",
    "to_dict",
    "from_dict",
    "field",
]


# ----------------------------------------------------------------------------------
# The action network (FLOWER's flow transformer with the MeanFlow interval h)
# ----------------------------------------------------------------------------------

POSITION_MODES = ("rope", "learned", "none")  # FLOWER: use_rope / learned table / use_nope
H_PLACEMENTS = ("adaln", "decoder")


@dataclass(frozen=True)
class FlowerConfig:
    """FLOWER's flow transformer plus the MeanFlow interval h.

    Defaults are FLOWER's conf/model/flower.yaml with CALVIN's single action space
    (`eef_delta`, 7-D) and Florence-2-large tokens (1024 features). One action space is
    modelled; its name only appears in parameter names (`action_encoders.<name>...`).

    h_placement: "adaln" adds stateless_norm(h_embedder(h)) to the global conditioning
    (every block sees h); "decoder" replaces the action decoder by the seed guide's
    MeanFlowDecoder (h embedded, concat(features, h_emb) -> MLP -> actions).
    decoder_hidden_dim 0 means 2 * dit_dim (the guide's choice).
    """

    action_dim: int = 7
    act_window_size: int = 10
    cond_dim: int = 1024
    dit_dim: int = 1024
    n_heads: int = 16
    n_layers: int = 18
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    mlp_pdrop: float = 0.1
    position_mode: str = "rope"
    rope_theta: float = 32.0
    query_seq_len: int = 100  # FLOWER's RoPE table length: the longest action window
    lora_dim: int = 256  # each block's adaLN down-projection
    frequency_embedding_size: int = 256
    # FLOWER multiplies the time frequencies by 1000 (t and, for MeanFlow, h). MeanFlow's
    # target has h * du/dt, and d/dt sin(1000 f t) makes that term ~1000x larger: MeanFlow
    # diverged at 1000 on a tiny problem (any lr); the reach presets use 1.0 (docs/RESULTS.md).
    time_scale: float = 1000.0
    use_proprio: bool = False
    proprio_dim: int = 7
    proprio_pdrop: float = 0.2
    action_space: str = "eef_delta"
    h_placement: str = "adaln"
    decoder_hidden_dim: int = 0

    def __post_init__(self):
        check_types(self)
        check_choice(self, "position_mode", POSITION_MODES)
        check_choice(self, "h_placement", H_PLACEMENTS)
        for name in ("action_dim", "act_window_size", "cond_dim", "dit_dim", "n_heads", "n_layers", "query_seq_len",
                     "lora_dim", "frequency_embedding_size", "proprio_dim"):
            check_range(self, name, 1)
        check_range(self, "decoder_hidden_dim", 0, why="0 means 2 * dit_dim")
        for name in ("attn_pdrop", "resid_pdrop", "mlp_pdrop", "proprio_pdrop"):
            check_range(self, name, 0.0, 1.0, hi_open=True)
        check_range(self, "rope_theta", 0.0, lo_open=True)
        check_range(self, "time_scale", 0.0, lo_open=True)
        check_multiple(self, "dit_dim", "n_heads")
        if self.position_mode == "rope" and (self.dit_dim // self.n_heads) % 2:
            raise ValueError(f"FlowerConfig: RoPE needs an even head dim, got dit_dim {self.dit_dim} / n_heads "
                             f"{self.n_heads} = {self.dit_dim // self.n_heads}")
        if self.position_mode == "rope" and self.act_window_size > self.query_seq_len:
            raise ValueError(f"FlowerConfig.act_window_size={self.act_window_size} exceeds "
                             f"query_seq_len={self.query_seq_len}")
        if self.frequency_embedding_size % 2:
            raise ValueError(f"FlowerConfig.frequency_embedding_size={self.frequency_embedding_size} must be even")
        if not self.action_space.isidentifier():
            raise ValueError(f"FlowerConfig.action_space={self.action_space!r} must be an identifier")

    @property
    def decoder_hidden(self) -> int:
        """Hidden width of the "decoder" h placement's MLP."""
        return self.decoder_hidden_dim or 2 * self.dit_dim


FLOWER_PRESETS: dict[str, FlowerConfig] = {
    # conf/model/flower.yaml: D 1024, 16 heads, 18 layers, RoPE theta 32, dropout 0.1
    "default": FlowerConfig(),
    # FLOWERVLA's constructor defaults (Florence-2-base tokens, learned positions)
    "base": FlowerConfig(cond_dim=768, dit_dim=512, n_heads=16, n_layers=12, position_mode="learned"),
    # CPU-sized: the parity suite and quick training runs
    "small": FlowerConfig(cond_dim=128, dit_dim=128, n_heads=4, n_layers=4, lora_dim=64),
    # tests
    "tiny": FlowerConfig(
        action_dim=3, act_window_size=4, cond_dim=24, dit_dim=32, n_heads=2, n_layers=2,
        lora_dim=16, frequency_embedding_size=32, proprio_dim=5, decoder_hidden_dim=48,
    ),
}

__all__ += ["FlowerConfig", "FLOWER_PRESETS", "POSITION_MODES", "H_PLACEMENTS"]


@dataclass(frozen=True)
class PolicyConfig(FlowerConfig):
    """The FLOWER policy: the transformer (every FlowerConfig field) behind the built-in
    observation encoder, observations [B, obs_dim] -> `num_tokens` conditioning tokens.
    obs_dim 4 is the built-in reach task's [x, y, goal_x, goal_y]."""

    obs_dim: int = 4
    num_tokens: int = 4

    def __post_init__(self):
        super().__post_init__()
        if self.obs_dim < 1 or self.num_tokens < 1:
            raise ValueError(f"obs_dim and num_tokens must be >= 1, got {self.obs_dim}, {self.num_tokens}")


# The policy presets: the FLOWER presets with the reach task's observations; "reach" and
# "tiny_reach" are the networks of the trainer presets of those names (chunks [10, 2] of 2-D
# velocities, no dropout, time scale 1), so a reach run's checkpoint converts by its preset.
_REACH_POLICY = dict(action_dim=2, act_window_size=10, attn_pdrop=0.0, resid_pdrop=0.0, mlp_pdrop=0.0, time_scale=1.0)
POLICY_PRESETS: dict[str, PolicyConfig] = {
    **{name: PolicyConfig(**dataclasses.asdict(cfg)) for name, cfg in FLOWER_PRESETS.items()},
    "reach": PolicyConfig(**{**dataclasses.asdict(FLOWER_PRESETS["small"]), **_REACH_POLICY}),
    "tiny_reach": PolicyConfig(**{**dataclasses.asdict(FLOWER_PRESETS["tiny"]), **_REACH_POLICY}),
}

__all__ += ["PolicyConfig", "POLICY_PRESETS"]
