"""The parity report: a table for people, a JSON file for machines."""
from __future__ import annotations

from typing import Sequence

from meanflow_common.json_io import write_json as write_json_file
from parity.core.compare import CheckResult
from parity.core.rule import DEFAULT_RULE
from parity.core.tolerances import TOLERANCES, overrides


def _ok(r: CheckResult) -> str:
    """PASS / FAIL; "info" for rows that are reported and never fail (TF32 drift, bf16-mixed)."""
    return "info" if r.info.get("informational") else "PASS" if r.passed else "FAIL"


def _fixed(r: CheckResult) -> str:
    """Under the calibrated float32 rule: the reference's own float32 error and the fixed
    tolerance's verdict ("ok" / "over"); blank for rows judged by the fixed table."""
    if r.info.get("rule") != "calibrated":
        return f"{'':9} {'':5}"
    return f"{r.info['own_err']:9.2e} {'ok' if r.info['fixed_passed'] else 'over':5}"


def format_table(results: Sequence[CheckResult]) -> str:
    """One line per check; tol is the budget applied (calibrated float32 rows: the rule's,
    with the reference's own float32 error in "own f32" and the fixed tolerance's verdict
    in "fixed")."""
    wa = max([len(r.arch) for r in results] + [7])
    head = (f"{'arch':{wa}} {'variant':22} {'dtype':8} {'dev':5} {'quantity':16} {'max_abs':>10} {'max_rel':>10} "
            f"{'tol':>8} {'own f32':>9} {'fixed':5}  {'ok':4} where")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.arch:{wa}} {r.variant[:22]:22} {r.dtype:8} {r.device:5} {r.quantity[:16]:16} "
            f"{r.max_abs:10.3e} {r.max_rel:10.3e} {r.tol:8.1e} {_fixed(r)}  {_ok(r):4} {r.where}"
        )
    n_fail = sum(not r.passed for r in results)
    n_info = sum(bool(r.info.get("informational")) for r in results)
    lines.append("-" * len(head))
    lines.append(f"{len(results) - n_fail - n_info} passed, {n_fail} failed"
                 + (f", {n_info} reported only" if n_info else ""))
    return "\n".join(lines)


def format_tolerances(archs=(), rule=DEFAULT_RULE) -> str:
    """The default tolerances, the overrides of the architectures `archs` (Arch objects) and
    the float32 rule (parity.core.rule.Float32Rule)."""
    lines = ["tolerances (max error relative to the reference's max magnitude):"]
    for (dtype, device), tols in TOLERANCES.items():
        lines.append(f"  {dtype:8} {device:5} " + ", ".join(f"{k} {v:.0e}" for k, v in tols.items()))
    for (arch, dtype), (tols, reason) in overrides(archs).items():
        lines.append(f"  except {arch} {dtype}: " + ", ".join(f"{k} {v:.0e}" for k, v in tols.items())
                     + f" ({reason})")
    return "\n".join(lines)


def write_json(path: str, results: Sequence[CheckResult], meta: dict, archs=(), rule=DEFAULT_RULE):
    """Write the full report atomically; non-finite errors (max_abs inf when the port produced
    NaN) are written as the strings "inf" / "nan" (`meanflow_common.json_io`); `archs`: the
    architectures whose tolerance overrides apply; `rule`: the float32 rule in force."""
    payload = {"meta": meta, "tolerances": {f"{d}/{v}": t for (d, v), t in TOLERANCES.items()},
               "tolerance_overrides": {f"{a}/{d}": {"tolerances": t, "reason": reason}
                                       for (a, d), (t, reason) in overrides(archs).items()},
               "float32_rule": rule.as_dict(),
               "checks": [r.as_dict() for r in results],
               "passed": all(r.passed for r in results)}
    write_json_file(path, payload)
