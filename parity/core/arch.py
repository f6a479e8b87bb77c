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
z and u have the data's shape (in each side's layout), t and h are [B].

The registry (`register_arch`, `get_arch`, `resolve_variants`: a name, an entry point of the
group `parity.archs`, or a `package.module:NAME` spec) lives above this module, with the
built-ins, in `parity.archs.registry`.
"""
from __future__ import annotations

import importlib
import pickle
import sys
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from meanflow_common.config import MeanFlowConfig, get_preset, override



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
    make_bundle(variant, batch, seed, **options) -> `InputBundle` (float64, JAX layout);
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
    make_bundle: Callable[..., Any]
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

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Arch.name must be a non-empty string, got {self.name!r}")
        if self.default_preset not in self.presets:
            raise ValueError(f"Arch {self.name!r}: default_preset {self.default_preset!r} is not one of "
                             f"its presets {sorted(self.presets)}")
        if self.tolerances and not self.tolerance_reason:
            raise ValueError(f"Arch {self.name!r}: tolerance overrides need a tolerance_reason (the measurement)")
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

    def default_variants(self, preset: str | None = None, sets: Sequence[str] = ()) -> list["Variant"]:
        """The default suite on preset `preset`, model config fields overridden by `sets`
        ("field=value")."""
        out = [Variant(self, name, model_cfg, mf_cfg) for name, model_cfg, mf_cfg in self.variants(self.preset(preset))]
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

    def checked_jax_u_fn(self, module, params, dropout_rng=None) -> Callable:
        """`jax_u_fn`'s u_fn, refusing a u whose shape is not z's (`check_u_shape`); the check
        runs at trace time, so it costs the compiled executable nothing."""
        return _shape_checked(self.jax_u_fn(module, params, dropout_rng), self, "JAX")

    def checked_torch_u_fn(self, module) -> Callable:
        """`torch_u_fn`'s u_fn, refusing a u whose shape is not z's (`check_u_shape`) before
        the objective's forward-mode AD meets it."""
        return _shape_checked(self.torch_u_fn(module), self, "torch")

    def control(self, name: str):
        """This network's negative control `name`."""
        by_name = {c.name: c for c in self.controls}
        if name not in by_name:
            raise KeyError(f"{self.name} has no control {name!r}; available: {', '.join(sorted(by_name)) or 'none'}")
        return by_name[name]


def check_u_shape(arch: Arch, side: str, u_shape, z_shape) -> None:
    """Raise ValueError unless the `side` ("JAX" or "torch") network's u has z's shape
    (each in that side's layout), naming the side, both shapes and, when u's shape is a
    permutation of z's, the layout the Arch declares."""
    u_shape, z_shape = tuple(u_shape), tuple(z_shape)
    if u_shape == z_shape:
        return
    hint = ""
    if sorted(u_shape) == sorted(z_shape):
        hint = (f"; u's shape is a permutation of z's: does the {side} network return the other side's layout? "
                f"{arch.name}'s Arch.layout is {arch.layout.name!r} (JAX layout -> torch layout by "
                f"layout.to_torch), and each side's u must be in its own side's layout")
    raise ValueError(f"{arch.name}: the {side} network returned u of shape {u_shape} for z of shape {z_shape}; "
                     f"u must have z's shape (Arch.{side.lower()}_u_fn, {side} layout){hint}")


def _shape_checked(u_fn: Callable, arch: Arch, side: str) -> Callable:
    def checked(z, t, h, y, train=False):
        u = u_fn(z, t, h, y, train)
        check_u_shape(arch, side, getattr(u, "shape", ()), z.shape)
        return u

    return checked


@dataclass(frozen=True)
class Variant:
    """One configuration of the compared pair: the Arch object, a name, the model config and
    the objective config."""

    arch: Arch
    name: str
    model_cfg: Any
    mf_cfg: MeanFlowConfig

    def __post_init__(self):
        if not isinstance(self.arch, Arch):
            raise TypeError(f"Variant.arch must be an Arch object, got {type(self.arch).__name__} {self.arch!r} "
                            f"(look names up with parity.get_arch)")
        if not isinstance(self.mf_cfg, MeanFlowConfig):
            raise TypeError(f"Variant {self.name!r}: mf_cfg must be a MeanFlowConfig, got {type(self.mf_cfg).__name__}")
        needs = [f"{k}={getattr(self.mf_cfg, k)!r}" for k, on in (("guidance_eq", bool(self.mf_cfg.guidance_eq)),
                 ("class_dropout_prob", self.mf_cfg.class_dropout_prob > 0)) if on]
        if needs and self.arch.null_label is None:
            raise ValueError(f"variant {self.name!r} of {self.arch.name}: its MeanFlowConfig has {' and '.join(needs)}, "
                             f"which need the null class, but the Arch's null_label is None; give the Arch "
                             f"null_label=lambda model_cfg: <the null class, e.g. model_cfg.num_classes>, or make "
                             f"this variant unguided (Arch.variants: MeanFlowConfig(guidance_eq=\"\", "
                             f"class_dropout_prob=0.0))")


def load_object(spec: str):
    """The object named by "package.module:NAME" (the module imported from sys.path)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form package.module:NAME")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise ValueError(f"{spec!r}: cannot import module {module_name!r} ({err}); run from the folder that "
                         f"holds it or install its package") from err
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


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
