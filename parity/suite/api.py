"""`parity.check`: run the parity suite on any network pair and get a report that explains a failure.

    report = parity.check(MY_ARCH, dtypes=("float64", "float32"))
    report.assert_ok()   # raises ParityError: failing quantities, worst error, the debugger's blame

The command line (`python -m parity`) runs the same `run_suite`, with the same default checks.
"""
from __future__ import annotations

import time
from typing import Sequence

from parity.archs.registry import get_objective, resolve_variants, with_objective
from parity.checks.registry import DEFAULT_CHECKS, parse_groups
from parity.core.arch import Arch, Variant
from parity.core.rule import DEFAULT_RULE, Float32Rule
from parity.suite.report import ParityReport
from parity.suite.run import run_suite


def _variants_of(target, preset: str | None, objective=None) -> list[Variant]:
    if isinstance(target, str):
        return resolve_variants(target, preset, objective=objective)
    if isinstance(target, Arch):
        return target.default_variants(preset, objective=get_objective(objective))
    if isinstance(target, Variant):
        return with_objective([target], objective)
    if isinstance(target, (list, tuple)) and target and all(isinstance(v, Variant) for v in target):
        return with_objective(target, objective)
    raise TypeError(f"parity.check needs an Arch, a Variant, a non-empty list of Variants or an --arch spec "
                    f"string, got {type(target).__name__}")


def check(target, dtypes: Sequence[str] = ("float32", "float64"), device: str = "cpu", seed: int = 0,
          batch: int = 6, *, objective=None, preset: str | None = None, trained_steps: int = 0,
          params: dict | None = None,
          control=None, xla_compile: str = "fast", checks: str | Sequence = DEFAULT_CHECKS,
          rule: Float32Rule = DEFAULT_RULE, raise_on_failure: bool = False) -> ParityReport:
    """Compare every quantity of the objective (MeanFlow: u, du/dt, v_g, u_tgt, the per-sample
    loss, the loss) and every gradient of its loss on the two sides of `target` and return the
    `ParityReport`.

    target: an Arch (its default variants on `preset` under `objective`), a Variant, a list
    of Variants (each with its own objective), or an `--arch` spec string ("dit",
    "pkg.module:NAME"); objective: a `parity.Objective`, a registered name ("meanflow") or
    "pkg.module:NAME" (None: MeanFlow, or the Variants' own); dtypes: of "float64", "float32";
    device: "cpu" or "cuda"; seed: weights from `seed`, inputs from seed + 1; batch: the
    batch size B of every input [B, ...]; params: given JAX-layout weights for every variant
    (instead of random); trained_steps: also compare after that many Adam steps; control: a
    negative control injected into the torch side; checks: the checks beyond the objective
    comparison, as the command line's --checks ("all", the default, "none", or names of
    parity.checks.registry.CHECK_GROUPS and `Check` objects of your own); rule: how float32
    is judged (parity.core.rule.Float32Rule: calibrated by a float64 run of the reference by
    default; Float32Rule("fixed") for the tolerance table alone); raise_on_failure: raise
    ParityError (as `report.assert_ok()` does) instead of returning a failing report.
    """
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 comparisons; float32 arrays stay float32
    if isinstance(dtypes, str):
        dtypes = tuple(d.strip() for d in dtypes.split(","))
    for d in dtypes:
        if d not in ("float32", "float64"):
            raise ValueError(f"dtype {d!r}: the parity check compares float32 and float64")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: use cpu or cuda")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    groups = parse_groups(checks)
    variants = _variants_of(target, preset, objective)
    start = time.time()
    results, meta_runs = run_suite(variants, dtypes, [device], seed=seed, batch=batch,
                                   params_for=None if params is None else (lambda v: params),
                                   trained_steps=trained_steps, xla_compile=xla_compile, control=control,
                                   checks=groups, rule=rule)
    report = ParityReport(results, variants, seed=seed, batch=batch, control=control,
                          elapsed_s=time.time() - start, meta_runs=meta_runs, rule=rule)
    if raise_on_failure:
        report.assert_ok()
    return report
