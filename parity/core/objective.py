"""The objective as a plug-in of the harness: an `Objective` describes one training objective
completely, as an `Arch` describes one network pair.

An `Objective` declares what the harness, the checks and the debugger need about the loss
that both sides compute:
- its name (printed, the registry key) and the config class of its variants;
- the named quantities it produces and which of them are compared (`Quantity`: the data's
  shape or not, a tolerance class of `parity.core.tolerances`, whether an all-zero reference
  proves nothing); the quantity whose gradient is compared (`loss`);
- the randomness it consumes: `make_bundle(variant, batch, seed, **options)` draws the whole
  input bundle once in float64 NumPy (JAX layout), and `jax_inputs` / `torch_inputs` cast it
  for each side (dtype, device, the Arch's layout and conditioning);
- its JAX and torch implementations, pure functions of (network, inputs, config) returning
  the named quantities as a dict (`jax_loss`, `torch_loss`);
- how it calls the network (`convention`, a `Convention`): the Arch gives the call through
  an adapter for that convention (`Arch.jax_net` / `Arch.torch_net`), and an Arch without one
  is refused with a message naming both;
- its samplers' check against NumPy formulas, its branch-coverage predicate, its negative
  controls, its default variants on an Arch, and the network call inside its JVP for the
  debugger (`jvp_point`, `jvp_call`, `jvp_terms`, `hints`);
- frozen second network pairs it calls (`aux`: `AuxNet`, e.g. a perceptual loss's features),
  whose weights the harness gives both sides (parity.core.aux_nets).

Nothing outside an objective's own definition looks at its name except to print it. The
built-in `MEANFLOW` is in `parity.core.meanflow`; the registry (`register_objective`,
`get_objective`, `--objective NAME`) in `parity.archs.registry`.
"""
from __future__ import annotations

import importlib
import pickle
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from parity.core.tolerances import QUANTITIES


@dataclass(frozen=True, eq=False)
class Convention:
    """How an objective calls the network an Arch builds.

    name: a short label (printed); signature: the call, in words (printed in errors), e.g.
    "u_fn(z, t, h, y, train) -> u"; check(arch, side, out, args) (optional): refuses an
    output that does not fit the convention (a shape that is not z's), raising ValueError
    naming the side. Compared by identity: an Arch supports the Convention objects it holds.
    """

    name: str
    signature: str
    check: Callable | None = None

    def __repr__(self) -> str:
        return f"Convention({self.name!r}: {self.signature})"


@dataclass(frozen=True)
class Adapter:
    """An Arch's call of its network in one `Convention`: jax(module, params, dropout_rng=None)
    -> the JAX callable, torch(module) -> the torch callable."""

    jax: Callable
    torch: Callable


class ObjectiveMismatch(TypeError, ValueError):
    """An Arch that cannot be called the way an objective needs, or a variant whose config is
    not the objective's (caught as either TypeError or ValueError)."""


@dataclass(frozen=True)
class Quantity:
    """One compared output of an objective. name: its key in the implementations' dicts;
    tol: its tolerance class (a key of parity.core.tolerances.F32, default the name itself);
    data: of the data's shape [B, ...] (moved between the sides' layouts) rather than per
    sample or scalar; nonzero: a reference identically zero fails (it proves nothing)."""

    name: str
    tol: str = ""
    data: bool = False
    nonzero: bool = False

    @property
    def tol_class(self) -> str:
        return self.tol or self.name


@dataclass(frozen=True)
class JvpPoint:
    """The network call inside an objective's JVP, float64 NumPy in the JAX layout, as both
    sides of the debugger feed it.

    primals, tangents: the JVP's arguments (e.g. (z_t, t, r) and (v_g, 1, 0)); data: which of
    them have the data's shape (moved to torch's layout); fixed: {name: per-sample array}
    passed undifferentiated (e.g. guidance scales); y: the conditioning the network sees
    (class dropout applied); bundle: the run's bundle; objective: the objective whose JVP
    this is (set by the debugger), whose `jvp_call` calls the network on these arguments.
    """

    primals: tuple
    tangents: tuple
    data: tuple
    y: Any
    bundle: Any
    fixed: Mapping[str, np.ndarray] = field(default_factory=dict)
    objective: Any = None

    def jax_call(self, arch, module, params, primals, fixed, y):
        """The JAX network (module, params) at these JAX arrays, as the objective calls it."""
        net = arch.jax_net(self.objective.convention, module, params)
        return self.objective.jvp_call(net, primals, fixed, y)

    def torch_call(self, arch, module, primals, fixed, y):
        """The torch network `module` at these tensors, as the objective calls it."""
        return self.objective.jvp_call(arch.torch_net(self.objective.convention, module), primals, fixed, y)


@dataclass(frozen=True, eq=False)
class AuxNet:
    """A second network pair an objective calls besides the trained one (e.g. the feature
    network of a perceptual loss), frozen: it gets no gradient and its weights are the same
    numbers on both sides (converted through its Arch's table).

    arch: its Arch (builders, table, calls); convention: how the objective calls it (default
    U_FN); preset: its model config (default the Arch's default preset); params(model_cfg) ->
    JAX-layout weights (NumPy; pretrained ones, the user's), or None: every leaf random from a
    fixed seed, rounded to float32 (so a float64 and a float32 run see the same numbers)."""

    arch: Any
    convention: Convention = None
    preset: str | None = None
    params: Callable | None = None

    def __post_init__(self):
        if self.convention is None:
            object.__setattr__(self, "convention", U_FN)


@dataclass(frozen=True, eq=False)
class Objective:
    """One training objective, computed by both sides. Compared by identity (the harness
    caches compiled functions per objective); pickled by reference (a module attribute).

    name: printed (and the registry key); convention: how it calls the network;
    config_type: the class of its variants' configs; quantities: the compared outputs, in
    report order; loss: the scalar quantity whose gradient for every parameter is compared
    ("grad");
    make_bundle(variant, batch, seed, **options) -> bundle: every random input, float64 NumPy
    in the JAX layout (a frozen dataclass with at least `x`, `y`; floating arrays in it are
    rounded for the float32 truth run);
    jax_inputs(variant, bundle, dtype) -> tuple of JAX arrays / pytrees;
    torch_inputs(variant, bundle, dtype, device) -> tuple of torch tensors;
    jax_loss(net, inputs, cfg) -> {quantity: array} (jitted, differentiated; `net` is the
    Arch's callable in `convention`, called with train=False);
    torch_loss(net, inputs, cfg, jvp) -> {quantity: tensor} (`jvp`: the run's
    torch_meanflow.objective.JvpOptions, which an implementation may ignore);
    variants(arch, model_cfg) -> [(name, model_cfg, cfg)]: the default suite on an Arch;
    check_variant(variant) (optional): refuses a config the Arch cannot serve, naming it;
    branches(bundle, cfg) -> {branch: samples reaching it} (optional): the coverage check;
    samplers(seed) -> [CheckResult] (optional): each backend's sampler against NumPy;
    controls: objective-level negative controls (`parity.Control`, each must fail);
    no_op_changes: porting changes that are not bugs (a control that must pass), by name;
    jvp_point(variant, bundle, ref_terms) -> JvpPoint and jvp_call(net, primals, fixed, y)
    -> output (optional): the debugger's network call inside the JVP; jvp_terms: the
    (primal, tangent) quantities of that call (e.g. ("u", "du_dt")); hints: ((quantity, what
    a first failure there means), ...) in the order the objective computes them;
    aux: {name: AuxNet} frozen second networks (a perceptual loss's): then both
    implementations are called with `aux={name: that network's callable}` as a keyword.
    """

    name: str
    convention: Convention
    config_type: type
    quantities: tuple
    loss: str
    make_bundle: Callable[..., Any]
    jax_inputs: Callable[..., tuple]
    torch_inputs: Callable[..., tuple]
    jax_loss: Callable[..., Mapping]
    torch_loss: Callable[..., Mapping]
    variants: Callable[[Any, Any], Sequence[tuple]]
    check_variant: Callable | None = None
    branches: Callable | None = None
    samplers: Callable | None = None
    controls: tuple = ()
    no_op_changes: Mapping[str, Any] = field(default_factory=dict)
    jvp_point: Callable | None = None
    jvp_call: Callable | None = None
    jvp_terms: tuple = ()
    hints: tuple = ()
    aux: Mapping[str, AuxNet] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"Objective.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.convention, Convention):
            raise TypeError(f"Objective {self.name!r}: convention must be a parity.Convention, "
                            f"got {type(self.convention).__name__}")
        object.__setattr__(self, "quantities", tuple(self.quantities))
        names = [q.name for q in self.quantities]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"Objective {self.name!r}: quantities must be non-empty and distinct, got {names}")
        if self.loss not in names:
            raise ValueError(f"Objective {self.name!r}: loss {self.loss!r} is not one of its quantities {names}")
        for q in self.quantities:
            if q.tol_class not in QUANTITIES:
                raise ValueError(f"Objective {self.name!r}: quantity {q.name!r} has tolerance class "
                                 f"{q.tol_class!r}; choose one of {', '.join(QUANTITIES)} (Quantity(tol=...))")
        missing = [t for t in self.jvp_terms if t not in names]
        if missing or (self.jvp_point is None) != (self.jvp_call is None) or \
                (self.jvp_point is not None and len(self.jvp_terms) != 2):
            raise ValueError(f"Objective {self.name!r}: the debugger needs jvp_point, jvp_call and jvp_terms "
                             f"(primal, tangent) among its quantities together, got jvp_terms {self.jvp_terms}")
        for name, a in self.aux.items():
            if not isinstance(a, AuxNet):
                raise TypeError(f"Objective {self.name!r}: aux[{name!r}] must be a parity.AuxNet, got {type(a).__name__}")
            if not a.arch.supports(a.convention):
                raise ObjectiveMismatch(f"objective {self.name}: its auxiliary network {name!r} is called as "
                                        f"{a.convention.signature}, which Arch {a.arch.name} does not provide")
        for c in (*self.controls, *self.no_op_changes.values()):  # refused under another objective
            if not c.for_objective:
                object.__setattr__(c, "for_objective", self.name)

    def __repr__(self) -> str:
        return f"Objective({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self):
        # as Arch: by the module attribute that holds it (a child process imports it again)
        spec = self.spec()
        if spec is not None:
            return (_module_attribute, (spec,))
        raise pickle.PicklingError(f"Objective {self.name!r} is not a module attribute; define it at the top level "
                                   f"of an importable module to pickle it (e.g. for the x64-off child)")

    def spec(self) -> str | None:
        """"package.module:NAME" of a module attribute holding this object, or None."""
        for mod_name, module in list(sys.modules.items()):
            if mod_name == "__main__":
                continue
            for attr, value in list(getattr(module, "__dict__", {}).items()):
                if value is self:
                    return f"{mod_name}:{attr}"
        return None

    @property
    def names(self) -> tuple:
        """The compared quantities' names, in report order."""
        return tuple(q.name for q in self.quantities)

    @property
    def data_names(self) -> tuple:
        return tuple(q.name for q in self.quantities if q.data)

    def quantity(self, name: str) -> Quantity:
        for q in self.quantities:
            if q.name == name:
                return q
        raise KeyError(f"objective {self.name} has no quantity {name!r}; its quantities: {', '.join(self.names)}")

    def control(self, name: str):
        """This objective's negative control (or no-op change) `name`."""
        table = {c.name: c for c in self.controls}
        table.update(self.no_op_changes)
        if name not in table:
            raise KeyError(f"objective {self.name} has no control {name!r}; available: {', '.join(sorted(table)) or 'none'}")
        return table[name]

    def check_arch(self, arch) -> None:
        """Raise ObjectiveMismatch unless `arch` can be called in this objective's convention."""
        if not arch.supports(self.convention):
            have = "; ".join(c.signature for c in arch.conventions) or "none"
            raise ObjectiveMismatch(
                f"objective {self.name} calls the network as {self.convention.signature} (convention "
                f"{self.convention.name!r}), which Arch {arch.name} does not provide (its calls: {have}); give the "
                f"Arch an adapter: Arch(..., adapters={{<that Convention>: parity.Adapter(jax=..., torch=...)}})")

    def validate(self, variant) -> None:
        """The checks of a Variant of this objective: the Arch's convention, the config's class,
        then the objective's own `check_variant`."""
        self.check_arch(variant.arch)
        if not isinstance(variant.mf_cfg, self.config_type):
            raise ObjectiveMismatch(f"variant {variant.name!r} of {variant.arch.name}: objective {self.name} needs a "
                                    f"{self.config_type.__name__} config, got {type(variant.mf_cfg).__name__}")
        if self.check_variant is not None:
            self.check_variant(variant)


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


def check_u_shape(arch, side: str, u_shape, z_shape) -> None:
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


def same_shape_as_first(arch, side: str, out, args) -> None:
    """A `Convention.check`: the output (each element of a tuple output) has the shape of the
    first argument (z), in that side's layout (`check_u_shape`)."""
    for o in (out if isinstance(out, (tuple, list)) else (out,)):
        check_u_shape(arch, side, getattr(o, "shape", ()), args[0].shape)


# The MeanFlow family's network call, the one `Arch.jax_u_fn` / `Arch.torch_u_fn` provide.
U_FN = Convention("u", "u_fn(z, t, h, y, train) -> u (u of z's shape, t and h [B])", check=same_shape_as_first)
