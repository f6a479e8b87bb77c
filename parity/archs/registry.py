"""The architecture registry: `--arch NAME`, `get_arch`, `resolve_variants`.

Where the architectures come from: `register_arch(arch)` (the built-ins of `parity.archs`
register themselves this way, before this module can be used: importing it imports the
package), the entry-point group `parity.archs` of installed packages, or a
`package.module:NAME` spec naming an Arch, a Variant or a list of Variants.
"""
from __future__ import annotations

from dataclasses import fields as dataclass_fields
from dataclasses import replace
from typing import Sequence

from meanflow_common.config import override
from parity.core.arch import Arch, Variant, check_sets, load_object

ENTRY_POINT_GROUP = "parity.archs"

_REGISTRY: dict[str, Arch] = {}
_DEFAULT_SUITE: list[Arch] = []


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


def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
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


def resolve_variants(spec: str | None = None, preset: str | None = None, sets: Sequence[str] = ()) -> list[Variant]:
    """The variants a command runs, from `--arch`.

    spec: None (the built-in suite), "all" (every registered architecture), comma-separated
    registered names, or "package.module:NAME" naming an Arch, a Variant or a list of Variants.
    preset and sets (model config "field=value") apply to every architecture named.
    """
    if spec is None:
        names: Sequence = builtin_suite()
    elif spec == "all":
        names = list(registered())
    elif ":" in spec:
        return _as_variants(load_object(spec), spec, preset, sets)
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    archs = [get_arch(name) for name in names]
    fields_of = {a.name: {f.name for f in dataclass_fields(a.preset(preset))} for a in archs}
    check_sets(sets, [a.preset(preset) for a in archs])
    out: list[Variant] = []
    for arch in archs:  # each architecture takes the fields its config has
        mine = [s for s in sets if s.split("=", 1)[0].strip() in fields_of[arch.name]]
        out += arch.default_variants(preset, mine)
    return out


def select_variants(spec: str | None = None, preset: str | None = None, sets: Sequence[str] = (),
                    name: str | None = None) -> list[Variant]:
    """`resolve_variants`, then only the variants whose name contains `name` (--variant); none
    matching is an error naming the ones there are."""
    variants = resolve_variants(spec, preset, sets)
    if name:
        chosen = [v for v in variants if name in v.name]
        if not chosen:
            raise KeyError(f"no variant matches {name!r}; variants: {', '.join(sorted({v.name for v in variants}))}")
        variants = chosen
    return variants


def default_variants(preset: str | None = None) -> list[Variant]:
    """The built-in suite: every built-in architecture's default variants (on `preset`)."""
    return resolve_variants(None, preset)


def resolve_arch(spec: str) -> Arch:
    """One Arch from a registered name or "package.module:NAME"."""
    if ":" in spec:
        return _arch_of(load_object(spec), spec)
    return get_arch(spec)


