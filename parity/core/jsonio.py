"""Atomic, strict JSON files: every report, debug result and benchmark is written here.

Written to a temporary file in the target folder and renamed, so a half-written file never
replaces a good one; non-finite floats become the strings "inf", "-inf", "nan" (strict JSON
has no Infinity).
"""
from __future__ import annotations

import json
import math
import os
import tempfile


def finite(x):
    """`x` with non-finite floats as strings, recursively through dicts, lists and tuples."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def write_json_atomic(path: str, payload) -> str:
    """Write `payload` as indented strict JSON to `path` atomically; returns `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(finite(payload), f, indent=1, default=str, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
