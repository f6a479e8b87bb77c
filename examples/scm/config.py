"""The sCM objective's settings (Lu & Song, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models", arXiv 2410.11081), numpy only."""
from __future__ import annotations

from dataclasses import dataclass

TANGENTS = ("data", "model")


@dataclass(frozen=True)
class SCMConfig:
    """sigma_d: the data's standard deviation (TrigFlow; the noise is N(0, sigma_d^2 I));
    P_mean, P_std: t = arctan(exp(tau) / sigma_d) with tau ~ N(P_mean, P_std^2) (the paper's
    -1.0, 1.4); warmup: the tangent warmup ratio r in [0, 1] (the paper raises it linearly
    from 0 to 1 over the first iterations; 1 after the warmup); tangent_c: the tangent
    normalisation g / (||g|| + c) (the paper's c = 0.1; 0 switches it off); tangent: "data"
    (consistency training: dx_t/dt = cos(t) z - sin(t) x0) or "model" (the network's own
    velocity sigma_d F(x_t / sigma_d, t), without gradient)."""

    sigma_d: float = 1.0
    P_mean: float = -1.0
    P_std: float = 1.4
    warmup: float = 1.0
    tangent_c: float = 0.1
    tangent: str = "data"

    def __post_init__(self):
        for name in ("sigma_d", "P_mean", "P_std", "warmup", "tangent_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"SCMConfig.{name} must be a number, got {type(value).__name__} {value!r}")
        if not self.sigma_d > 0 or not self.P_std > 0:
            raise ValueError(f"SCMConfig: sigma_d and P_std must be > 0, got {self.sigma_d}, {self.P_std}")
        if not 0.0 <= self.warmup <= 1.0:
            raise ValueError(f"SCMConfig.warmup must lie in [0, 1], got {self.warmup}")
        if self.tangent_c < 0:
            raise ValueError(f"SCMConfig.tangent_c must be >= 0, got {self.tangent_c}")
        if self.tangent not in TANGENTS:
            raise ValueError(f"SCMConfig.tangent must be one of {TANGENTS}, got {self.tangent!r}")
