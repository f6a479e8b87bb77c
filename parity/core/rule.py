"""The float32 rule calibrated by float64: a budget that scales with the network.

float32 rounding grows with depth and width, so one fixed float32 tolerance either fails
an honest port of a large network or, loosened, hides a real bug in a small one. The
calibrated rule measures the rounding on the network at hand instead: next to the two
float32 sides, the JAX reference runs in float64 on the same weights and inputs (the
truth), and each quantity passes when

    |torch32 - jax32| <= min(factor * |jax32 - jax64|, ceiling_factor * fixed) + floor * floor_scale

every error a max over elements relative to the reference's max magnitude (as the fixed
tolerances are). The reference's own float32 error is the yardstick; the port's own
distance from the truth is not, since a porting bug would inflate it and widen its own
budget. `floor` covers quantities whose rounding vanished by chance (a scalar loss that
happened to round exactly); for a parameter's gradient it is relative to the largest
gradient of any parameter (floor_scale = that max / the leaf's max), so a leaf whose
gradient is nearly zero is judged against the gradient's scale, not against its own
noise. The ceiling keeps the budget bounded when the reference's float32 itself breaks
down (an overflow, a cancellation): then nothing passes on the strength of it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RULES = ("calibrated", "fixed")


@dataclass(frozen=True)
class Float32Rule:
    """How float32 checks are judged.

    kind: "calibrated" (the default) or "fixed" (the tolerance table alone); factor: the
    allowed ratio of the two sides' difference to the reference's own float32 error;
    floor: relative error that always passes (default 2**-21, four float32 ulps);
    ceiling_factor: the budget never exceeds this times the fixed tolerance.
    """

    kind: str = "calibrated"
    factor: float = 4.0
    floor: float = 2.0 ** -21
    ceiling_factor: float = 10.0

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"float32 rule {self.kind!r}: use one of {', '.join(RULES)}")
        for name in ("factor", "floor", "ceiling_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"Float32Rule.{name} must be a positive finite number, got {value!r}")

    @property
    def calibrated(self) -> bool:
        return self.kind == "calibrated"

    def budget(self, own_err: float, fixed_tol: float, floor_scale: float = 1.0) -> float:
        """The relative error allowed for one quantity: own_err = |jax32 - jax64| relative to
        the reference's max magnitude, fixed_tol its fixed tolerance."""
        return min(self.factor * own_err, self.ceiling_factor * fixed_tol) + self.floor * floor_scale

    def describe(self) -> str:
        if not self.calibrated:
            return "float32 rule: fixed (the tolerance table alone)"
        return (f"float32 rule: calibrated: |torch32 - jax32| <= min({self.factor:g} x |jax32 - jax64|, "
                f"{self.ceiling_factor:g} x fixed tol) + {self.floor:.1e} (gradients: x largest gradient / "
                f"the leaf's); the fixed verdict is reported beside it")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "factor": self.factor, "floor": self.floor, "ceiling_factor": self.ceiling_factor}


DEFAULT_RULE = Float32Rule()
FIXED_RULE = Float32Rule("fixed")


def _rel(ref: np.ndarray, truth: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    truth = np.asarray(truth, np.float64)
    if ref.shape != truth.shape:
        raise ValueError(f"shape mismatch: float32 reference {ref.shape} vs float64 truth {truth.shape}")
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    diff = float(np.max(np.abs(ref - truth)))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


@dataclass
class OwnErrors:
    """The reference's float32 error against its float64 truth, one number per quantity.

    terms: {term: relative error}; grads: {torch parameter name: relative error};
    grad_floor_scale: {name: largest |grad| of any parameter / this leaf's largest |grad|}.
    Scalars only: the float64 truth itself can be released once these are taken.
    """

    terms: dict
    grads: dict
    grad_floor_scale: dict

    def as_dict(self) -> dict:
        return {"terms": dict(self.terms), "grads": dict(self.grads)}


def own_errors(ref, truth) -> OwnErrors:
    """`OwnErrors` of the float32 reference outputs `ref` against the float64 `truth`
    (both parity.core.harness.SideOutputs of the JAX side, same weights and inputs)."""
    missing = sorted(set(ref.grads) ^ set(truth.grads))
    if missing:
        raise KeyError(f"gradient keys differ between the float32 reference and its float64 truth: {missing[:8]}")
    terms = {k: _rel(ref.terms[k], truth.terms[k]) for k in ref.terms}
    grads = {k: _rel(ref.grads[k], truth.grads[k]) for k in ref.grads}
    leaf_max = {k: float(np.max(np.abs(g))) if np.size(g) else 0.0 for k, g in ref.grads.items()}
    top = max(leaf_max.values(), default=0.0)
    scale = {k: (top / m if m > 0 else 1.0) for k, m in leaf_max.items()}
    return OwnErrors(terms, grads, scale)
