"""The extension point of the harness: an `Arch` describes one network pair completely.

An `Arch` carries everything the harness, converter, debugger and benchmark need about one
network written twice (Flax and torch): the two builders and u_fn factories, the
conversion `Table` object, the data layout between the sides, the conditioning (how a
bundle's y becomes each side's input, and the null label), the input bundle, the
debugger's module map and the default variants. Nothing outside an architecture's own
definition looks at its name except to print it.

Calling conventions (both networks):
- JAX: `jax_build(model_cfg) -> (module, init)`, `init(key, dtype) -> params` (a Flax tree);
  `module.apply({"params": params}, z, t, h, y, train=False) -> u`;
  `jax_u_fn(module, params, dropout_rng=None) -> u_fn(z, t, h, y, train) -> u`.
- torch: `torch_build(model_cfg) -> nn.Module` with `forward(z, t, h, y, train=False) -> u`;
  `torch_u_fn(module) -> u_fn(z, t, h, y, train) -> u`.
z and u have the data's shape (in each side's layout), t and h are [B]. That is the
MeanFlow family's call (`parity.core.objective.U_FN`); an objective that calls the network
another way (`Objective.convention`) is served through `Arch.adapters`
({Convention: Adapter(jax=..., torch=...)}), and an Arch without its convention is refused
(`Objective.check_arch`).

The registry (`register_arch`, `get_arch`, `resolve_variants`: a name, an entry point of the
group `parity.archs`, or a `package.module:NAME` spec) lives above this module, with the
built-ins, in `parity.archs.registry`.
"""
from __future__ import annotations

import pickle
import sys
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from meanflow_common.config import MeanFlowConfig, get_preset, override
from parity.core.meanflow import MEANFLOW
from parity.core.objective import U_FN, Adapter, Convention, Objective, check_u_shape, load_object  # noqa: F401


@dataclass(frozen=True)
class Layout:
    """How data arrays differ between the sides: `to_torch(a)` maps the JAX layout to
    torch's, `from_torch(a)` back. Applied to x, e, u, du/dt and the debugger's captures."""

    name: str
    to_torch: Callable[[np.ndarray], np.ndarray]
    from_torch: Callable[[np.ndarray], np.ndarray]


def _nhwc_to_nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


def _nchw_to_nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


# Images: Flax convolutions are channels-last, torch's channels-first. Arrays of another rank
# (tokens, embeddings) are the same on both sides.
CHANNELS_LAST_TO_FIRST = Layout("NHWC <-> NCHW (rank-4 arrays)", _nhwc_to_nchw, _nchw_to_nhwc)
SAME_LAYOUT = Layout("same on both sides", lambda a: a, lambda a: a)


@dataclass(frozen=True)
class ModuleMapSpec:
    """What the debugger needs beyond the conversion table to pair modules.

    pairs: (Flax path pattern, torch name pattern) of modules without parameters (absent
    from the table), e.g. ("blocks/layers_{i}/norm1", "blocks.{i}.norm1");
    wrappers: Flax path segments that add a module level torch does not have;
    block: the torch name pattern of the repeated block ("blocks.{i}"), whose outputs measure
    the growth of error with depth ("" when there is none). Placeholders take their values
    from the table's ranges.
    """

    pairs: tuple = ()
    wrappers: tuple = ()
    block: str = ""


@dataclass(frozen=True)
class BenchSpec:
    """One benchmarked size of a network: its model config, objective config, what it is
    (printed), the Arch's extra `make_bundle` options (e.g. conditioning tokens per sample;
    the benchmark's command line overrides them by name) and `sampler(model_cfg, batch,
    device, num_steps) -> fn()`, one timed sampling call of the network's deployed form
    (None: not timed)."""

    model_cfg: Any
    mf_cfg: MeanFlowConfig
    what: str
    bundle_options: Mapping[str, Any] = field(default_factory=dict)
    sampler: Callable | None = None


@dataclass(frozen=True, eq=False)
class Arch:
    """One network pair. Compared by identity (the harness caches compiled functions per Arch).

    name: printed in reports (and the registry key); presets: {name: model config};
    default_preset: the preset of the default variants;
    table: the `parity.convert.Table` between the Flax tree and the torch state dict;
    make_bundle(variant, batch, seed, **options) -> `InputBundle` (float64, JAX layout): the
    MeanFlow objective's whole bundle (None: drawn from `make_data` by the objective);
    make_data(model_cfg, batch, rng, **options) -> (x, y): the data and conditioning alone,
    float64 NumPy in the JAX layout, drawn from the NumPy generator `rng` (what objectives
    other than MeanFlow draw their bundles around);
    adapters: {Convention: Adapter} calls of the network beyond `jax_u_fn`/`torch_u_fn`
    (which serve `U_FN`), for objectives that call it another way;
    jax_y(y, dtype) / torch_y(y, dtype, device): a bundle's y as each side's conditioning;
    null_label(model_cfg) -> the null class (an int), or None for networks without class
    labels (then no guidance and no class dropout);
    variants(model_cfg) -> [(variant name, model config, MeanFlowConfig)]: the default suite;
    layout: data layout between the sides; module_map: the debugger's extra module pairs;
    tolerances: {dtype: {quantity: tolerance}} overriding the defaults, with the measured
    reason in tolerance_reason (printed by every report);
    controls: negative controls written for this network (`parity.core.controls.Control`);
    dropout(model_cfg) -> the largest dropout rate in training (the benchmark's train step);
    jax_shapes(model_cfg) -> the Flax parameter tree as jax.ShapeDtypeStruct leaves, computing
    nothing (the harness draws random weights into it); None: taken from a float32 `init`;
    set_dropout(model_cfg, on) -> the config with non-zero test dropout rates (on) or every
    rate 0 (off); None: the network has no dropout (the dropout check skips it);
    bench_sizes: {size name: `BenchSpec`}, the sizes `python -m parity bench` measures.
    """

    name: str
    presets: Mapping[str, Any]
    default_preset: str
    table: Any
    jax_build: Callable[[Any], tuple]
    jax_u_fn: Callable[..., Callable]
    torch_build: Callable[[Any], Any]
    torch_u_fn: Callable[[Any], Callable]
    jax_y: Callable[[Any, Any], Any]
    torch_y: Callable[[Any, Any, Any], Any]
    variants: Callable[[Any], Sequence[tuple]]
    null_label: Callable[[Any], int] | None = None
    layout: Layout = SAME_LAYOUT
    module_map: ModuleMapSpec = field(default_factory=ModuleMapSpec)
    tolerances: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    tolerance_reason: str = ""
    controls: tuple = ()
    dropout: Callable[[Any], float] = lambda cfg: 0.0
    jax_shapes: Callable[[Any], Any] | None = None
    set_dropout: Callable[[Any, bool], Any] | None = None
    bench_sizes: Mapping[str, "BenchSpec"] = field(default_factory=dict)
    make_bundle: Callable[..., Any] | None = None
    make_data: Callable[..., tuple] | None = None
    adapters: Mapping[Convention, Adapter] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Arch.name must be a non-empty string, got {self.name!r}")
        if self.default_preset not in self.presets:
            raise ValueError(f"Arch {self.name!r}: default_preset {self.default_preset!r} is not one of "
                             f"its presets {sorted(self.presets)}")
        if self.tolerances and not self.tolerance_reason:
            raise ValueError(f"Arch {self.name!r}: tolerance overrides need a tolerance_reason (the measurement)")
        if self.make_bundle is None and self.make_data is None:
            raise ValueError(f"Arch {self.name!r}: give make_data(model_cfg, batch, rng) -> (x, y) (or make_bundle)")
        for conv, adapter in self.adapters.items():
            if not isinstance(conv, Convention) or not isinstance(adapter, Adapter):
                raise TypeError(f"Arch {self.name!r}: adapters maps parity.Convention to parity.Adapter, got "
                                f"{type(conv).__name__} -> {type(adapter).__name__}")
        for c in self.controls:
            # a bug in this network's modules or weights is refused on another network
            if (c.model is not None or c.state is not None) and not c.owner:
                object.__setattr__(c, "owner", self.name)

    def __repr__(self) -> str:
        return f"Arch({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):
        # Pickled by reference (its callables need not pickle, e.g. for a child process): the
        # module attribute that holds this object, imported again on unpickling. The built-ins
        # and entry-point architectures are module attributes.
        spec = self.spec()
        if spec is not None:
            return (_module_attribute, (spec,))
        raise pickle.PicklingError(f"Arch {self.name!r} is not a module attribute; define it at the top level "
                                   f"of an importable module to pickle it (e.g. for the x64-off child)")

    def spec(self) -> str | None:
        """"package.module:NAME" of a module attribute that holds this object (what --arch and
        a child process take), or None when no imported module holds it."""
        for mod_name, module in list(sys.modules.items()):
            if mod_name == "__main__":
                continue  # another process's __main__ is another program
            for attr, value in list(getattr(module, "__dict__", {}).items()):
                if value is self:
                    return f"{mod_name}:{attr}"
        return None

    def preset(self, name: str | None = None):
        """The model config of preset `name` (default: `default_preset`)."""
        return get_preset(self.presets, name or self.default_preset, f"{self.name} preset")

    def default_variants(self, preset: str | None = None, sets: Sequence[str] = (),
                         objective: Objective | None = None) -> list["Variant"]:
        """The default suite on preset `preset` under `objective` (default MEANFLOW: the
        Arch's own `variants`; another objective's `variants(arch, model_cfg)`), model config
        fields overridden by `sets` ("field=value")."""
        objective = MEANFLOW if objective is None else objective
        if not isinstance(objective, Objective):
            raise TypeError(f"objective must be a parity.Objective, got {type(objective).__name__} {objective!r} "
                            f"(look names up with parity.get_objective)")
        objective.check_arch(self)
        out = [Variant(self, name, model_cfg, cfg, objective)
               for name, model_cfg, cfg in objective.variants(self, self.preset(preset))]
        if sets:  # after the variants: a field set by name holds in every variant
            out = [replace(v, model_cfg=override(v.model_cfg, list(sets))) for v in out]
        return out

    def null_y(self, variant: "Variant", batch: int) -> np.ndarray | None:
        """Null labels int [B] when the objective needs them (guidance or class dropout), else None."""
        if self.null_label is None:
            return None
        if not (variant.mf_cfg.guidance_eq or variant.mf_cfg.class_dropout_prob > 0):
            return None
        return np.full((batch,), int(self.null_label(variant.model_cfg)), dtype=np.int64)

    @property
    def conventions(self) -> tuple:
        """The calls of the network this Arch provides: `U_FN` (jax_u_fn / torch_u_fn), then
        its adapters'."""
        return (U_FN, *(c for c in self.adapters if c is not U_FN))

    def supports(self, convention: Convention) -> bool:
        return any(c is convention for c in self.conventions)

    def _adapter(self, convention: Convention) -> Adapter:
        if convention in self.adapters:
            return self.adapters[convention]
        if convention is U_FN:
            return Adapter(jax=self.jax_u_fn, torch=self.torch_u_fn)
        have = "; ".join(c.signature for c in self.conventions)
        raise ValueError(f"Arch {self.name} has no call {convention.signature} (convention {convention.name!r}); "
                         f"its calls: {have}")

    def jax_net(self, convention: Convention, module, params, dropout_rng=None) -> Callable:
        """The JAX network called in `convention` (its adapter, or jax_u_fn for U_FN), its
        output checked at trace time by the convention's `check` (costing the compiled
        executable nothing)."""
        return _checked(self._adapter(convention).jax(module, params, dropout_rng), self, "JAX", convention)

    def torch_net(self, convention: Convention, module) -> Callable:
        """The torch network called in `convention`, its output checked by the convention's
        `check` before the objective's forward-mode AD meets it."""
        return _checked(self._adapter(convention).torch(module), self, "torch", convention)

    def data(self, model_cfg, batch: int, rng, **options) -> tuple:
        """(x, y) of `make_data`; an Arch without it is refused, naming what to give."""
        if self.make_data is None:
            raise ValueError(f"Arch {self.name} has no make_data(model_cfg, batch, rng) -> (x, y), which objectives "
                             f"that draw their own randomness need (it has a make_bundle for MeanFlow only)")
        return self.make_data(model_cfg, batch, rng, **options)

    def checked_jax_u_fn(self, module, params, dropout_rng=None) -> Callable:
        """`jax_u_fn`'s u_fn, refusing a u whose shape is not z's (`check_u_shape`); the check
        runs at trace time, so it costs the compiled executable nothing."""
        return self.jax_net(U_FN, module, params, dropout_rng)

    def checked_torch_u_fn(self, module) -> Callable:
        """`torch_u_fn`'s u_fn, refusing a u whose shape is not z's (`check_u_shape`) before
        the objective's forward-mode AD meets it."""
        return self.torch_net(U_FN, module)

    def control(self, name: str):
        """This network's negative control `name`."""
        by_name = {c.name: c for c in self.controls}
        if name not in by_name:
            raise KeyError(f"{self.name} has no control {name!r}; available: {', '.join(sorted(by_name)) or 'none'}")
        return by_name[name]


def _checked(fn: Callable, arch: Arch, side: str, convention: Convention) -> Callable:
    if convention.check is None:
        return fn

    def checked(*args):
        out = fn(*args)
        convention.check(arch, side, out, args)
        return out

    return checked


@dataclass(frozen=True)
class Variant:
    """One configuration of the compared pair: the Arch object, a name, the model config, the
    objective's config (`mf_cfg`, named for the default objective; a `config_type` instance
    of `objective`) and the `Objective` object (default MEANFLOW)."""

    arch: Arch
    name: str
    model_cfg: Any
    mf_cfg: Any
    objective: Objective = MEANFLOW

    def __post_init__(self):
        if not isinstance(self.arch, Arch):
            raise TypeError(f"Variant.arch must be an Arch object, got {type(self.arch).__name__} {self.arch!r} "
                            f"(look names up with parity.get_arch)")
        if not isinstance(self.objective, Objective):
            raise TypeError(f"Variant {self.name!r}: objective must be a parity.Objective, got "
                            f"{type(self.objective).__name__} {self.objective!r} (look names up with "
                            f"parity.get_objective)")
        self.objective.validate(self)

    @property
    def cfg(self):
        """The objective's config (the same object as `mf_cfg`)."""
        return self.mf_cfg


def _module_attribute(spec: str):
    return load_object(spec)


def check_sets(sets: Sequence[str], model_cfgs: Sequence) -> None:
    """Every --set "FIELD=VALUE" names a field of at least one of `model_cfgs` (a typo is an
    error, not a silently unmodified model)."""
    known = set().union(*({f.name for f in dataclass_fields(c)} for c in model_cfgs))
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r} is not of the form FIELD=VALUE")
        name = item.split("=", 1)[0].strip()
        if name not in known:
            kinds = "/".join(sorted({type(c).__name__ for c in model_cfgs}))
            raise KeyError(f"--set {item!r}: unknown field {name!r} of {kinds}; valid: {', '.join(sorted(known))}")


def archs_of(variants: Sequence[Variant]) -> list[Arch]:
    """The distinct architectures of `variants`, in order of appearance."""
    out: list[Arch] = []
    for v in variants:
        if not any(a is v.arch for a in out):
            out.append(v.arch)
    return out
