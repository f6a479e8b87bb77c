"""The float32 rule calibrated by float64: a budget that scales with the network.

float32 rounding grows with depth and width, so one fixed float32 tolerance either fails
an honest port of a large network or, loosened, hides a real bug in a small one. The
calibrated rule measures the rounding on the network at hand instead: next to the two
float32 sides, the JAX reference runs in float64 on the same weights and inputs (the
truth), and each quantity passes when

    max|torch32 - jax32| <= min(factor * max|jax32 - jax64|, ceiling_factor * fixed) + floor * floor_scale
    rms(torch32 - jax32) <= rms_factor * rms(jax32 - jax64) + rms_floor * floor_scale

every error relative to the reference's max magnitude (the max as the fixed tolerances
are). Rounding is random and heavy-tailed (its max several times its rms), a porting bug
systematic (a LayerNorm eps shifts every element alike), so the rms criterion sees a bug
that hides under the max of the rounding at large sizes; it applies to quantities of at
least `rms_min_elements` elements, whose rms is a stable estimate. The reference's own
float32 error is the yardstick; the port's own
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
    allowed ratio of the two sides' max difference to the reference's own max float32 error;
    rms_factor: the same for the rms, on quantities of >= rms_min_elements elements;
    floor: relative error that always passes (default 2**-21, four float32 ulps);
    rms_floor: the same for the rms (default 2**-23, one ulp: an rms over many elements
    does not vanish by chance);
    ceiling_factor: the max budget never exceeds this times the fixed tolerance.
    """

    kind: str = "calibrated"
    factor: float = 4.0
    rms_factor: float = 2.5
    rms_min_elements: int = 64
    floor: float = 2.0 ** -21
    rms_floor: float = 2.0 ** -23
    ceiling_factor: float = 10.0

    def __post_init__(self):
        if self.kind not in RULES:
            raise ValueError(f"float32 rule {self.kind!r}: use one of {', '.join(RULES)}")
        if not isinstance(self.rms_min_elements, int) or isinstance(self.rms_min_elements, bool) \
                or self.rms_min_elements < 1:
            raise ValueError(f"Float32Rule.rms_min_elements must be an int >= 1, got {self.rms_min_elements!r}")
        for name in ("factor", "rms_factor", "floor", "rms_floor", "ceiling_factor"):
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

    def rms_budget(self, own_rms: float, floor_scale: float = 1.0) -> float:
        """The rms error allowed (relative to the reference's max magnitude)."""
        return self.rms_factor * own_rms + self.rms_floor * floor_scale

    def describe(self) -> str:
        if not self.calibrated:
            return "float32 rule: fixed (the tolerance table alone)"
        return (f"float32 rule: calibrated: max|torch32 - jax32| <= min({self.factor:g} x max|jax32 - jax64|, "
                f"{self.ceiling_factor:g} x fixed tol) + {self.floor:.1e}, and the rms <= {self.rms_factor:g} x the "
                f"reference's rms + {self.rms_floor:.1e} (>= {self.rms_min_elements} elements); gradients: the floor x "
                f"largest gradient / the leaf's; the fixed verdict is reported beside it")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "factor": self.factor, "rms_factor": self.rms_factor,
                "rms_min_elements": self.rms_min_elements, "floor": self.floor, "rms_floor": self.rms_floor,
                "ceiling_factor": self.ceiling_factor}


DEFAULT_RULE = Float32Rule()
FIXED_RULE = Float32Rule("fixed")


def rel_errors(ref, other) -> tuple[float, float]:
    """(max |ref - other|, rms(ref - other)), both relative to max |ref|, in float64."""
    ref = np.asarray(ref, np.float64)
    other = np.asarray(other, np.float64)
    if ref.shape != other.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {other.shape}")
    if ref.size == 0:
        return 0.0, 0.0
    scale = float(np.max(np.abs(ref)))
    diff = np.abs(ref - other)
    top, rms = float(np.max(diff)), float(np.sqrt(np.mean(diff * diff)))
    if scale > 0:
        return top / scale, rms / scale
    return (0.0, 0.0) if top == 0 else (float("inf"), float("inf"))


@dataclass
class OwnErrors:
    """The reference's float32 error against its float64 truth, one number per quantity.

    terms, grads: {term or torch parameter name: (max, rms) relative error};
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
    return own_errors_from(ref, truth.terms, truth.grads.items())


def own_errors_from(ref, truth_terms: dict, truth_grads) -> OwnErrors:
    """`own_errors` with the truth's gradients given as an iterable of (torch name, array),
    consumed one at a time: the float64 gradient tree need never exist whole."""
    grads = {}
    for k, g in truth_grads:
        if k not in ref.grads:
            raise KeyError(f"gradient keys differ between the float32 reference and its float64 truth: {[k]}")
        grads[k] = rel_errors(ref.grads[k], g)
        del g
    missing = sorted(set(ref.grads) - set(grads))
    if missing:
        raise KeyError(f"gradient keys differ between the float32 reference and its float64 truth: {missing[:8]}")
    terms = {k: rel_errors(ref.terms[k], truth_terms[k]) for k in ref.terms}
    leaf_max = {k: float(np.max(np.abs(g))) if np.size(g) else 0.0 for k, g in ref.grads.items()}
    top = max(leaf_max.values(), default=0.0)
    scale = {k: (top / m if m > 0 else 1.0) for k, m in leaf_max.items()}
    return OwnErrors(terms, grads, scale)
