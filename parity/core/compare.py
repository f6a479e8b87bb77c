"""Error measures between the reference (JAX) and the port (PyTorch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class CheckResult:
    """One compared quantity. max_rel is relative to the reference's max magnitude."""

    arch: str
    variant: str
    dtype: str
    device: str
    quantity: str
    max_abs: float
    max_rel: float
    tol: float
    passed: bool
    where: str = ""
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def error_stats(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, str]:
    """(max abs error, max abs error / max |ref|, index of the max error) in float64."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs port {got.shape}")
    if ref.size == 0:
        return 0.0, 0.0, ""
    diff = np.abs(ref - got)
    if not np.all(np.isfinite(got)):
        return float("inf"), float("inf"), "non-finite values in the port"
    idx = int(np.argmax(diff))
    max_abs = float(diff.reshape(-1)[idx])
    scale = float(np.max(np.abs(ref)))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    where = str(tuple(int(i) for i in np.unravel_index(idx, ref.shape))) if ref.ndim else "()"
    return max_abs, max_rel, where


def compare(ref, got, *, quantity: str, tol: float, nonzero: bool = False, own_err: float | None = None,
            rule=None, floor_scale: float = 1.0, **labels) -> CheckResult:
    """One quantity's check. nonzero: the reference must not be identically zero; agreement
    on all-zero values (zero-initialised layers, an all-zero weight file) proves nothing, so
    it fails, saying so. With `own_err` (the reference's float32 error against its float64
    truth, relative) and a calibrated `rule` (parity.core.rule.Float32Rule), `tol` is the
    fixed tolerance and the budget is the rule's; info then records both verdicts."""
    max_abs, max_rel, where = error_stats(ref, got)
    fixed = tol
    info = {}
    if own_err is not None and rule is not None and rule.calibrated:
        tol = rule.budget(own_err, fixed, floor_scale)
        info = {"rule": "calibrated", "own_err": own_err, "fixed_tol": fixed,
                "fixed_passed": bool(max_rel <= fixed), "floor_scale": floor_scale}
    result = CheckResult(
        quantity=quantity, max_abs=max_abs, max_rel=max_rel, tol=tol,
        passed=bool(max_rel <= tol), where=where, info=info, **labels,
    )
    if nonzero and not np.any(np.asarray(ref)):
        result.passed = False
        result.where = (f"{quantity} is identically zero on the reference side: the comparison proves nothing "
                        "(zero-initialised or all-zero weights?)")
    return result


def compare_grads(ref: dict, got: dict, *, tol: float, own=None, rule=None, **labels) -> list[CheckResult]:
    """Per-parameter gradient checks over torch-named dicts (same keys required); `own`:
    the reference's parity.core.rule.OwnErrors, for a calibrated `rule`."""
    missing = sorted(set(ref) ^ set(got))
    if missing:
        raise KeyError(f"gradient keys differ between the two sides: {missing[:8]}")
    return [compare(ref[k], got[k], quantity=f"grad:{k}", tol=tol, rule=rule,
                    own_err=None if own is None else own.grads[k],
                    floor_scale=1.0 if own is None else own.grad_floor_scale[k], **labels) for k in sorted(ref)]
