"""The report's checks beyond the objective comparison of each variant (`--checks`).

- "branches": each variant's input bundle reaches every branch of the objective (parity.extra.coverage);
- "samplers": each backend's `sample_noise` vs the other and vs NumPy (parity.extra.sampler_check);
- "dropout": FLOWER with non-zero dropout rates at train=False equals rates 0 on each side
  (parity.extra.dropout_eval), per dtype and device;
- "x64off": float32 with the JAX side in a process without x64 (parity.extra.x64_off), the first
  variant of each architecture, once (CPU).
"""
from __future__ import annotations

from parity.core.compare import CheckResult

CHECK_GROUPS = ("branches", "samplers", "dropout", "x64off")


def parse_groups(text: str) -> tuple[str, ...]:
    """"all", "none" or a comma list of CHECK_GROUPS; an unknown name is an error naming it."""
    if text == "all":
        return CHECK_GROUPS
    if text in ("none", ""):
        return ()
    groups = tuple(g.strip() for g in text.split(","))
    unknown = [g for g in groups if g not in CHECK_GROUPS]
    if unknown:
        raise ValueError(f"--checks: unknown group(s) {unknown}; choose from all, none, {', '.join(CHECK_GROUPS)}")
    return groups


def first_per_arch(variants):
    """The first variant of each architecture, in order."""
    seen, out = set(), []
    for v in variants:
        if id(v.arch) not in seen:
            seen.add(id(v.arch))
            out.append(v)
    return out


def x64_off_applies(groups, random_weights: bool, dtypes, devices) -> bool:
    """Whether the suite runs the x64-off check (float32 on CPU with random weights)."""
    return "x64off" in groups and random_weights and "float32" in dtypes and "cpu" in devices


def once_checks(groups, variants, *, seed: int, batch: int, dtypes, devices, xla_compile: str,
                random_weights: bool, rule=None) -> list[CheckResult]:
    """The checks that do not depend on the dtype or device loop; `rule`: how the float32 ones
    are judged (parity.core.rule.Float32Rule; None: the default, calibrated)."""
    results = []
    if "branches" in groups:
        from parity.extra.coverage import coverage_check

        results += [coverage_check(v, v.arch.make_bundle(v, batch, seed + 1)) for v in variants]
    if "samplers" in groups:
        from parity.extra.sampler_check import sampler_checks

        results += sampler_checks(seed=seed)
    if x64_off_applies(groups, random_weights, dtypes, devices):
        from parity.extra.x64_off import x64_off_checks

        results += x64_off_checks(first_per_arch(variants), seed=seed, batch=batch, xla_compile=xla_compile,
                                  rule=rule)
    return results


def run_checks(groups, variants, dtype: str, device: str, *, seed: int, batch: int, xla_compile: str,
               random_weights: bool, rule=None) -> list[CheckResult]:
    """The checks run once per (dtype, device), under the caller's pinned precision (the
    dropout check compares each side with itself, exactly: `rule` does not apply)."""
    results = []
    if "dropout" in groups and random_weights:
        from parity.extra.dropout_eval import dropout_eval_checks, has_dropout

        for v in first_per_arch(variants):
            if has_dropout(v):
                results += dropout_eval_checks(v, dtype, device, seed=seed, batch=batch, xla_compile=xla_compile)
    return results
