"""Branch coverage of a parity input bundle: every branch of the objective is reached.

A branch that no input reaches can hide a bug on both sides at once. For one variant's
bundle this checks that the samples include:
- r = t (h = 0) and r < t;
- with class dropout: dropped and kept samples;
- with a guidance window narrower than [0, 1]: KEPT samples with t inside and outside it
  (a dropped sample's v_g is v whatever the window says, so only kept ones show it).
"""
from __future__ import annotations

import numpy as np

from parity.checks.base import Check
from parity.core.compare import CheckResult
from parity.core.inputs import InputBundle


def branches(bundle: InputBundle, cfg) -> dict[str, int]:
    """Branch name -> number of samples of the bundle that reach it (the ones cfg has)."""
    t, r, drop = np.asarray(bundle.t), np.asarray(bundle.r), np.asarray(bundle.drop_mask, bool)
    out = {"r = t": int(np.sum(t == r)), "r < t": int(np.sum(r < t))}
    if cfg.class_dropout_prob > 0:
        out["dropped"] = int(drop.sum())
        out["kept"] = int((~drop).sum())
    if cfg.guidance_eq and not (cfg.t_start <= 0.0 and cfg.t_end >= 1.0):
        inside = (t >= cfg.t_start) & (t <= cfg.t_end)
        out["kept, t in window"] = int(np.sum(inside & ~drop))
        out["kept, t outside window"] = int(np.sum(~inside & ~drop))
    return out


def coverage_check(variant, bundle: InputBundle) -> CheckResult:
    """One result: passes when every branch of `branches` has at least one sample; `where`
    names the branches no sample reaches."""
    counts = branches(bundle, variant.mf_cfg)
    missing = [name for name, n in counts.items() if n == 0]
    return CheckResult(
        arch=variant.arch.name, variant=variant.name, dtype="-", device="-", quantity="branches",
        max_abs=float(len(missing)), max_rel=float(len(missing)), tol=0.0, passed=not missing,
        where=("unreached: " + ", ".join(missing)) if missing else f"{len(counts)} reached",
        info={"samples_per_branch": counts},
    )


class BranchesCheck(Check):
    """"branches": one `coverage_check` per variant, on the bundle its run is given."""

    name = "branches"

    def finish(self) -> list[CheckResult]:
        from parity.core.harness import variant_bundle

        return [coverage_check(v, variant_bundle(v, self.ctx.batch, self.ctx.seed)) for v in self.variants]
