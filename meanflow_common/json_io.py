"""JSON reports that strict parsers accept: no bare Infinity or NaN.

Python's json module writes float('inf') as `Infinity` and NaN as `NaN`, which are not JSON
(strict parsers such as `jq`, JavaScript's JSON.parse or Go's encoding/json reject the file).
Every report of the project is written through `write_json`: a non-finite number becomes the
string "inf", "-inf" or "nan" (the value stays readable and distinguishable from a missing
one), NumPy scalars and arrays become plain numbers and lists, and `allow_nan=False` makes
any leftover a loud error instead of a broken file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

__all__ = ["json_safe", "write_json"]


def json_safe(x: Any) -> Any:
    """`x` with non-finite floats as "inf" / "-inf" / "nan", NumPy values as Python ones,
    tuples as lists and dict keys as strings (recursively)."""
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # NumPy scalar or array
        x = x.tolist()
    if isinstance(x, float):
        return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_json(path: str, payload: Any, indent: int = 1) -> None:
    """Write `json_safe(payload)` to `path` atomically (a half-written report never replaces a
    good one); values JSON cannot hold otherwise are written as their str()."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(json_safe(payload), f, indent=indent, default=str, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
