"""The parity report: a table for people, a JSON file for machines."""
from __future__ import annotations

from typing import Sequence

from meanflow_common.json_io import write_json as write_json_file

from parity.compare import CheckResult
from parity.tolerances import ARCH_OVERRIDES, OVERRIDE_REASONS, TOLERANCES


def format_table(results: Sequence[CheckResult]) -> str:
    head = f"{'arch':7} {'variant':22} {'dtype':8} {'dev':5} {'quantity':16} {'max_abs':>10} {'max_rel':>10} {'tol':>8}  {'ok':4} where"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.arch:7} {r.variant[:22]:22} {r.dtype:8} {r.device:5} {r.quantity[:16]:16} "
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
    """Write the full report atomically; non-finite errors (max_abs inf when the port produced
    NaN) are written as the strings "inf" / "nan" (`meanflow_common.json_io`)."""
    payload = {"meta": meta, "tolerances": {f"{d}/{v}": t for (d, v), t in TOLERANCES.items()},
               "tolerance_overrides": {f"{a}/{d}": {"tolerances": t, "reason": OVERRIDE_REASONS[(a, d)]}
                                       for (a, d), t in ARCH_OVERRIDES.items()},
               "checks": [r.as_dict() for r in results],
               "passed": all(r.passed for r in results)}
    write_json_file(path, payload)
