"""Error measures between the reference (JAX) and the port (PyTorch)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from parity.core.rule import rel_errors


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

    @property
    def budget_used(self) -> float:
        """The error over its budget, the larger of max_rel / tol and (under the calibrated
        float32 rule) rms / rms budget: > 1 fails."""
        used = self.max_rel / self.tol if self.tol > 0 else (0.0 if self.max_rel == 0 else float("inf"))
        if self.info.get("rms_budget"):
            used = max(used, self.info["rms_rel"] / self.info["rms_budget"])
        return used


def error_stats(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, str]:
    """(max abs error, max abs error / max |ref|, index of the max error) in float64."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs port {got.shape}")
    if ref.size == 0:
        return 0.0, 0.0, ""
    # NaN compares false with every tolerance, but an error of NaN must never read as small:
    # a non-finite value on either side is an infinite error, named with its side and count.
    for side, a in (("port (torch)", got), ("reference (JAX)", ref)):
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape)) if a.ndim else ()
            kinds = "/".join(k for k, m in (("nan", np.isnan(a)), ("inf", np.isinf(a))) if m.any())
            return float("inf"), float("inf"), f"non-finite values in the {side}: {int(bad.sum())} {kinds}, first at {first}"
    diff = np.abs(ref - got)
    idx = int(np.argmax(diff))
    max_abs = float(diff.reshape(-1)[idx])
    scale = float(np.max(np.abs(ref)))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    where = str(tuple(int(i) for i in np.unravel_index(idx, ref.shape))) if ref.ndim else "()"
    return max_abs, max_rel, where


def compare(ref, got, *, quantity: str, tol: float, nonzero: bool = False, own_err=None, rule=None,
            floor_scale: float = 1.0, **labels) -> CheckResult:
    """One quantity's check. nonzero: the reference must not be identically zero; agreement
    on all-zero values (zero-initialised layers, an all-zero weight file) proves nothing, so
    it fails, saying so. With `own_err` ((max, rms) of the reference's float32 error against
    its float64 truth, relative) and a calibrated `rule` (parity.core.rule.Float32Rule),
    `tol` is the fixed tolerance, the budgets are the rule's and info records both verdicts."""
    max_abs, max_rel, where = error_stats(ref, got)
    fixed = tol
    info = {}
    passed = max_rel <= tol
    if own_err is not None and rule is not None and rule.calibrated:
        own_max, own_rms = own_err
        tol = rule.budget(own_max, fixed, floor_scale)
        passed = max_rel <= tol
        info = {"rule": "calibrated", "own_err": own_max, "own_rms": own_rms, "fixed_tol": fixed,
                "fixed_passed": bool(max_rel <= fixed), "floor_scale": floor_scale}
        if np.size(ref) >= rule.rms_min_elements and np.isfinite(max_rel):
            rms_rel = rel_errors(ref, got)[1]
            rms_budget = rule.rms_budget(own_rms, floor_scale)
            info.update(rms_rel=rms_rel, rms_budget=rms_budget, rms_passed=bool(rms_rel <= rms_budget))
            if rms_rel > rms_budget:
                passed = False
                where = f"{where} rms {rms_rel:.2e} > {rms_budget:.2e}"
    result = CheckResult(
        quantity=quantity, max_abs=max_abs, max_rel=max_rel, tol=tol,
        passed=bool(passed), where=where, info=info, **labels,
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
