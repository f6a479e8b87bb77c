"""The samplers in the parity report: for each objective of the run that declares a samplers
check (`Objective.samplers`), its rows, once per run (its draws depend on the seed alone).

MeanFlow's (each backend's `sample_noise` against the other and against NumPy) is
`parity.core.meanflow_samplers`, whose names this module re-exports.
"""
from __future__ import annotations

from parity.checks.base import Check
from parity.core.compare import CheckResult
from parity.core.meanflow_samplers import (N, PY_MEANFLOW_TIMES, SUITE_CONFIGS, Z, check_draw,  # noqa: F401
                                           draw_jax, draw_torch, sampler_checks, sampler_configs)


def objectives_of(variants) -> list:
    """The distinct objectives of `variants`, in order of appearance."""
    out: list = []
    for v in variants:
        if not any(o is v.objective for o in out):
            out.append(v.objective)
    return out


class SamplersCheck(Check):
    """"samplers": each objective's `samplers(seed)` rows, once per run."""

    name = "samplers"

    def finish(self) -> list[CheckResult]:
        return [r for o in objectives_of(self.variants) if o.samplers is not None for r in o.samplers(self.ctx.seed)]
