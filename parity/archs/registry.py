"""The architecture and objective registries: `--arch NAME`, `--objective NAME`, `get_arch`,
`get_objective`, `resolve_variants`.

Where the architectures come from: `register_arch(arch)` (the built-ins of `parity.archs`
register themselves this way, before this module can be used: importing it imports the
package), the entry-point group `parity.archs` of installed packages, or a
`package.module:NAME` spec naming an Arch, a Variant or a list of Variants. Objectives the
same way: `register_objective(objective)` (the built-in MEANFLOW, the default), the group
`parity.objectives`, or `package.module:NAME` naming an Objective.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Sequence

from meanflow_common.config import override
from parity.core.arch import Arch, Variant, check_sets, load_object
from parity.core.meanflow import MEANFLOW
from parity.core.objective import Objective

ENTRY_POINT_GROUP = "parity.archs"
OBJECTIVE_ENTRY_POINT_GROUP = "parity.objectives"

_REGISTRY: dict[str, Arch] = {}
_DEFAULT_SUITE: list[Arch] = []
_OBJECTIVES: dict[str, Objective] = {}
DEFAULT_OBJECTIVE = MEANFLOW


def register_arch(arch: Arch, *, replace_existing: bool = False, default_suite: bool = False) -> Arch:
    """Make `arch` known by its name (`--arch NAME`, `get_arch`); `default_suite`: also run
    it by `python -m parity` without --arch (the built-ins). Returns `arch`."""
    if not isinstance(arch, Arch):
        raise TypeError(f"register_arch needs an Arch, got {type(arch).__name__}")
    old = _REGISTRY.get(arch.name)
    if old is not None and old is not arch and not replace_existing:
        raise ValueError(f"an architecture named {arch.name!r} is already registered; "
                         f"pass replace_existing=True to replace it")
    _REGISTRY[arch.name] = arch
    if default_suite and not any(a is arch for a in _DEFAULT_SUITE):
        _DEFAULT_SUITE.append(arch)
    return arch


def builtin_suite() -> tuple[Arch, ...]:
    """The architectures of the default suite (`python -m parity` without --arch), in order."""
    return tuple(_DEFAULT_SUITE)


def _entry_point(name: str, group: str = ENTRY_POINT_GROUP):
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        if ep.name == name:
            return ep
    return None


def registered() -> dict[str, Arch]:
    """The registered architectures by name (built-ins first)."""
    return dict(_REGISTRY)


def get_arch(name: str) -> Arch:
    """A registered architecture, or one that an installed package declares in the
    entry-point group `parity.archs`."""
    if isinstance(name, Arch):
        return name
    if name not in _REGISTRY:
        ep = _entry_point(name)
        if ep is not None:
            obj = ep.load()
            arch = obj if isinstance(obj, Arch) else _arch_of(obj, f"entry point {ep.value}")
            return register_arch(arch) if name == arch.name else arch
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; registered: {', '.join(sorted(_REGISTRY))} "
                       f"(or give package.module:NAME)")
    return _REGISTRY[name]


def _arch_of(obj, where: str) -> Arch:
    return _as_variants(obj, where)[0].arch


def _as_variants(obj, where: str, preset: str | None = None, sets: Sequence[str] = ()) -> list[Variant]:
    if isinstance(obj, Arch):
        return obj.default_variants(preset, sets)
    if isinstance(obj, Variant):
        obj = [obj]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(v, Variant) for v in obj):
        if preset is not None:
            raise ValueError(f"{where} is a list of variants: --preset does not apply (their configs are fixed)")
        out = list(obj)
        if sets:
            out = [replace(v, model_cfg=override(v.model_cfg, list(sets))) for v in out]
        return out
    raise TypeError(f"{where} is a {type(obj).__name__}, not an Arch, a Variant or a non-empty list of Variants")


def register_objective(objective: Objective, *, replace_existing: bool = False) -> Objective:
    """Make `objective` known by its name (`--objective NAME`, `get_objective`). Returns it."""
    if not isinstance(objective, Objective):
        raise TypeError(f"register_objective needs an Objective, got {type(objective).__name__}")
    old = _OBJECTIVES.get(objective.name)
    if old is not None and old is not objective and not replace_existing:
        raise ValueError(f"an objective named {objective.name!r} is already registered; "
                         f"pass replace_existing=True to replace it")
    _OBJECTIVES[objective.name] = objective
    return objective


def registered_objectives() -> dict[str, Objective]:
    """The registered objectives by name (the built-in first)."""
    return dict(_OBJECTIVES)


def get_objective(spec: "str | Objective | None" = None) -> Objective:
    """An Objective from itself, None (the default, MEANFLOW), a registered name, a name an
    installed package declares in the entry-point group `parity.objectives`, or
    "package.module:NAME"."""
    if spec is None:
        return DEFAULT_OBJECTIVE
    if isinstance(spec, Objective):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"objective must be an Objective or a name, got {type(spec).__name__} {spec!r}")
    if ":" in spec:
        obj = load_object(spec)
        if not isinstance(obj, Objective):
            raise TypeError(f"{spec} is a {type(obj).__name__}, not a parity.Objective")
        return obj
    if spec not in _OBJECTIVES:
        ep = _entry_point(spec, OBJECTIVE_ENTRY_POINT_GROUP)
        if ep is not None:
            obj = ep.load()
            if not isinstance(obj, Objective):
                raise TypeError(f"entry point {ep.value} is a {type(obj).__name__}, not a parity.Objective")
            return register_objective(obj) if spec == obj.name else obj
        raise KeyError(f"unknown objective {spec!r}; registered: {', '.join(sorted(_OBJECTIVES))} "
                       f"(or give package.module:NAME)")
    return _OBJECTIVES[spec]


def with_objective(variants: Sequence[Variant], objective) -> list[Variant]:
    """`variants` under `objective` (None: as they are). Variants of another objective are
    refused: their configs are that objective's (give an Arch instead, whose variants the
    objective draws up)."""
    if objective is None:
        return list(variants)
    objective = get_objective(objective)
    other = sorted({f"{v.name} ({v.objective.name})" for v in variants if v.objective is not objective})
    if other:
        raise ValueError(f"--objective {objective.name}: the variants given carry their own objective: "
                         f"{', '.join(other)}; name an Arch for objective {objective.name} to draw up its variants")
    return list(variants)


def resolve_variants(spec: str | None = None, preset: str | None = None, sets: Sequence[str] = (),
                     objective=None) -> list[Variant]:
    """The variants a command runs, from `--arch` and `--objective`.

    spec: None (the built-in suite), "all" (every registered architecture), comma-separated
    registered names, or "package.module:NAME" naming an Arch, a Variant or a list of Variants.
    preset and sets (model config "field=value") apply to every architecture named;
    objective: an Objective, a registered name or "package.module:NAME" (None: MeanFlow, or
    the objective a Variant carries), whose variants each Arch gets.
    """
    if spec is not None and ":" in spec:
        obj = load_object(spec)
        if isinstance(obj, Arch):
            return obj.default_variants(preset, sets, get_objective(objective))
        return with_objective(_as_variants(obj, spec, preset, sets), objective)
    objective = get_objective(objective)
    if spec is None:
        names: Sequence = builtin_suite()
    elif spec == "all":
        names = list(registered())
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    archs = [get_arch(name) for name in names]
    fields_of = {a.name: {f.name for f in dataclass_fields(a.preset(preset))} for a in archs}
    check_sets(sets, [a.preset(preset) for a in archs])
    out: list[Variant] = []
    for arch in archs:  # each architecture takes the fields its config has
        mine = [s for s in sets if s.split("=", 1)[0].strip() in fields_of[arch.name]]
        out += arch.default_variants(preset, mine, objective)
    return out


def select_variants(spec: str | None = None, preset: str | None = None, sets: Sequence[str] = (),
                    name: str | None = None, objective=None) -> list[Variant]:
    """`resolve_variants`, then only the variants whose name contains `name` (--variant); none
    matching is an error naming the ones there are."""
    variants = resolve_variants(spec, preset, sets, objective)
    if name:
        chosen = [v for v in variants if name in v.name]
        if not chosen:
            raise KeyError(f"no variant matches {name!r}; variants: {', '.join(sorted({v.name for v in variants}))}")
        variants = chosen
    return variants


def default_variants(preset: str | None = None, objective=None) -> list[Variant]:
    """The built-in suite: every built-in architecture's default variants (on `preset`, under
    `objective`, default MeanFlow)."""
    return resolve_variants(None, preset, objective=objective)


def resolve_arch(spec: str) -> Arch:
    """One Arch from a registered name or "package.module:NAME"."""
    if ":" in spec:
        return _arch_of(load_object(spec), spec)
    return get_arch(spec)


