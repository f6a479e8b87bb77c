"""Type and range checks of config fields, and the parsing of command-line values.

Every config dataclass calls `check_types(self)` first in `__post_init__`, then its range
checks (`check_range`, `check_choice`), so a config cannot exist with a field of the wrong
type or out of range, whichever way it was built: a preset, `dataclasses.replace`, a JSON
file (`config_from_dict`) or `field=value` assignments (`parse_value`). The two trainers and
the parity tools therefore refuse the same values with the same message.

Types (from the dataclass annotations):
- int: a Python int; bool, float (also 8.0) and str ("4") are refused;
- float: an int or a float, stored as float; NaN and +-inf are refused (no field has a use for
  them, and every comparison with NaN is false, so a range check would let it through);
- bool: only True/False (JSON true/false); on the command line true/false/1/0 (any case);
- str: a str; tuple: a tuple or a list.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Sequence

__all__ = ["check_types", "check_range", "check_choice", "check_multiple", "parse_value", "type_name",
           "BOOL_WORDS"]

BOOL_WORDS = {"true": True, "1": True, "false": False, "0": False}


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def type_name(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin is not None:
        return getattr(origin, "__name__", str(typ))
    return getattr(typ, "__name__", str(typ))


def _label(obj, name: str) -> str:
    return f"{type(obj).__name__}.{name}"


def _checked(obj, name: str, value: Any, typ: Any) -> Any:
    """`value` as a `typ` field holds it (an int for a float field becomes a float)."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # "float | None": None, or the inner type
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None and len(inner) < len(typing.get_args(typ)):
            return value
        if len(inner) == 1:
            return _checked(obj, name, value, inner[0])
        return value
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{_label(obj, name)}={value!r} must be a finite number")
    elif typ is str:
        ok = isinstance(value, str)
    elif typ is tuple or origin is tuple:
        ok = isinstance(value, (tuple, list))
        value = tuple(value) if ok else value
    elif isinstance(typ, type):
        ok = isinstance(value, typ)
    else:  # an annotation this checker does not know: left to the config's own checks
        ok = True
    if not ok:
        raise TypeError(f"{_label(obj, name)}={value!r} ({type(value).__name__}) is not of the expected type "
                        f"{type_name(typ)}")
    return value


def check_types(obj) -> None:
    """Check (and normalise: int -> float, list -> tuple) every field of the frozen dataclass
    `obj` against its annotation; TypeError/ValueError naming the field, value and type."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        new = _checked(obj, f.name, value, hints[f.name])
        if new is not value:
            object.__setattr__(obj, f.name, new)


def check_range(obj, name: str, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, why: str = "") -> None:
    """ValueError unless lo <= value <= hi (strict where `lo_open` / `hi_open`)."""
    value = getattr(obj, name)
    ok = True
    if lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        need = " and ".join(s for s in (left, right) if s)
        raise ValueError(f"{_label(obj, name)}={value!r} must be {need}{f' ({why})' if why else ''}")


def check_choice(obj, name: str, choices: Sequence[str]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ValueError(f"{_label(obj, name)}={value!r} is not one of {list(choices)}")


def check_multiple(obj, name: str, of: str) -> None:
    """ValueError unless field `name` is a multiple of field `of`."""
    value, base = getattr(obj, name), getattr(obj, of)
    if value % base:
        raise ValueError(f"{_label(obj, name)}={value} is not a multiple of {of}={base}")


def parse_value(text: str, typ: Any, key: str) -> Any:
    """A command-line value (the text after `field=`) read as the field's type `typ`."""
    if isinstance(typ, str):
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, str)
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # "float | None": none/null is None
        args = typing.get_args(typ)
        inner = [a for a in args if a is not type(None)]
        if len(inner) < len(args) and text.strip().lower() in ("none", "null"):
            return None
        return parse_value(text, inner[0], key) if len(inner) == 1 else text
    if typ is bool:
        low = text.strip().lower()
        if low not in BOOL_WORDS:
            raise ValueError(f"{key}={text!r}: expected a bool (true/false/1/0)")
        return BOOL_WORDS[low]
    if typ is tuple or typing.get_origin(typ) in (tuple, list):
        import json

        if text.startswith("["):
            try:
                return tuple(json.loads(text))
            except ValueError as err:
                raise ValueError(f"{key}={text!r}: not a JSON list ({err})") from err
        return tuple(text.split(","))
    if typ in (int, float):
        try:
            return typ(text)
        except ValueError as err:
            raise ValueError(f"{key}={text!r}: expected {typ.__name__}") from err
    return text
