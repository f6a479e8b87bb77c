"""The checks beyond the objective comparison, in one list that the command line
(`--checks`) and the API (`parity.check(checks=...)`) both read, with one default.

- "branches": each variant's input bundle reaches every branch of the objective (branches.py);
- "samplers": each backend's `sample_noise` vs the other and vs NumPy (samplers.py);
- "dropout": non-zero dropout rates at train=False equal rates 0 on each side, for every
  architecture with a dropout hook (dropout.py), per dtype and device;
- "x64off": float32 with the JAX side in a process without x64 (x64_off.py), the first
  variant of each architecture, once (CPU);
- "mixed": bf16-mixed rows, reported and never failing (mixed.py); not in "all".
A check of your own is an object with the `parity.checks.base.Check` interface, passed in the
list beside the names.
"""
from __future__ import annotations

from typing import Sequence

from parity.checks.base import Check
from parity.checks.branches import BranchesCheck
from parity.checks.dropout import DropoutCheck
from parity.checks.mixed import MixedCheck
from parity.checks.samplers import SamplersCheck
from parity.checks.x64_off import X64OffCheck

CHECKS: tuple[type[Check], ...] = (BranchesCheck, SamplersCheck, DropoutCheck, X64OffCheck, MixedCheck)
CHECK_GROUPS = tuple(c.name for c in CHECKS)
DEFAULT_CHECKS = "all"


def parse_groups(spec: str | Sequence = DEFAULT_CHECKS) -> tuple:
    """"all" (every check with `in_all`), "none", a comma list of CHECK_GROUPS, or a sequence of
    names and `Check` objects; an unknown name is an error naming it and the known ones."""
    if isinstance(spec, str):
        if spec == "all":
            return tuple(c.name for c in CHECKS if c.in_all)
        if spec in ("none", ""):
            return ()
        spec = [g.strip() for g in spec.split(",") if g.strip()]
    out = []
    for g in spec:
        if isinstance(g, Check):
            out.append(g)
        elif g == "all":
            out += [c.name for c in CHECKS if c.in_all and c.name not in out]
        elif g in CHECK_GROUPS:
            if g not in out:
                out.append(g)
        else:
            raise ValueError(f"--checks: unknown group {g!r}; choose from all, none, {', '.join(CHECK_GROUPS)}")
    return tuple(out)


def make_checks(groups: Sequence) -> list[Check]:
    """Fresh check objects (a check keeps state through one run) for `parse_groups`' result,
    in the order of CHECKS, then the caller's own objects."""
    by_name = {c.name: c for c in CHECKS}
    names = [g for g in groups if isinstance(g, str)]
    return [by_name[n]() for n in CHECK_GROUPS if n in names] + [g for g in groups if isinstance(g, Check)]
