"""Branch coverage of a parity input bundle: every branch of the objective is reached.

A branch that no input reaches can hide a bug on both sides at once. The objective declares
its branches (`Objective.branches(bundle, cfg) -> {branch: samples reaching it}`); for
MeanFlow (`branches`, from parity.core.meanflow): r = t and r < t; with class dropout,
dropped and kept samples; with a guidance window narrower than [0, 1], KEPT samples with t
inside and outside it.
"""
from __future__ import annotations

from parity.checks.base import Check
from parity.core.compare import CheckResult
from parity.core.meanflow import branches  # noqa: F401  (MeanFlow's, re-exported)


def coverage_check(variant, bundle) -> CheckResult | None:
    """One result: passes when every branch of the variant's objective has at least one
    sample; `where` names the branches no sample reaches (None: the objective declares none)."""
    if variant.objective.branches is None:
        return None
    counts = variant.objective.branches(bundle, variant.mf_cfg)
    missing = [name for name, n in counts.items() if n == 0]
    return CheckResult(
        arch=variant.arch.name, variant=variant.name, dtype="-", device="-", quantity="branches",
        max_abs=float(len(missing)), max_rel=float(len(missing)), tol=0.0, passed=not missing,
        where=("unreached: " + ", ".join(missing)) if missing else f"{len(counts)} reached",
        info={"samples_per_branch": counts},
    )


class BranchesCheck(Check):
    """"branches": one `coverage_check` per variant whose objective declares branches, on the
    bundle its run is given."""

    name = "branches"

    def finish(self) -> list[CheckResult]:
        from parity.core.harness import variant_bundle

        rows = [coverage_check(v, variant_bundle(v, self.ctx.batch, self.ctx.seed)) for v in self.variants]
        return [r for r in rows if r is not None]
