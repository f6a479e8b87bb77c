"""The parity report: a table for people, a JSON file for machines."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

from parity.core.compare import CheckResult
from parity.core.tolerances import ARCH_OVERRIDES, OVERRIDE_REASONS, TOLERANCES


def format_table(results: Sequence[CheckResult]) -> str:
    head = f"{'arch':7} {'variant':16} {'dtype':8} {'dev':5} {'quantity':16} {'max_abs':>10} {'max_rel':>10} {'tol':>8}  {'ok':4} where"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.arch:7} {r.variant[:16]:16} {r.dtype:8} {r.device:5} {r.quantity[:16]:16} "
            f"{r.max_abs:10.3e} {r.max_rel:10.3e} {r.tol:8.1e}  {'PASS' if r.passed else 'FAIL':4} {r.where}"
        )
    n_fail = sum(not r.passed for r in results)
    lines.append("-" * len(head))
    lines.append(f"{len(results) - n_fail} passed, {n_fail} failed")
    return "\n".join(lines)


def format_tolerances() -> str:
    lines = ["tolerances (max error relative to the reference's max magnitude):"]
    for (dtype, device), tols in TOLERANCES.items():
        lines.append(f"  {dtype:8} {device:5} " + ", ".join(f"{k} {v:.0e}" for k, v in tols.items()))
    for (arch, dtype), tols in ARCH_OVERRIDES.items():
        lines.append(f"  except {arch} {dtype}: " + ", ".join(f"{k} {v:.0e}" for k, v in tols.items())
                     + f" ({OVERRIDE_REASONS[(arch, dtype)]})")
    return "\n".join(lines)


def write_json(path: str, results: Sequence[CheckResult], meta: dict):
    """Write the full report atomically (a half-written report never replaces a good one)."""
    payload = {"meta": meta, "tolerances": {f"{d}/{v}": t for (d, v), t in TOLERANCES.items()},
               "tolerance_overrides": {f"{a}/{d}": {"tolerances": t, "reason": OVERRIDE_REASONS[(a, d)]}
                                       for (a, d), t in ARCH_OVERRIDES.items()},
               "checks": [r.as_dict() for r in results],
               "passed": all(r.passed for r in results)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(tmp, path)
