"""The suite loop: every variant on every device and dtype, the trained weights, the checks.

For each (device, dtype), under pinned precision: each variant's pipeline run
(`parity.core.harness.run_sides`) and its objective comparison, then the checks' per-variant
hook; the first variant of each architecture once more after training; on cuda float32 the
frameworks' default precision, reported and never failing. Each check object
(`parity.checks.base.Check`) is prepared before the loop, finished after it and closed
whatever happens.
"""
from __future__ import annotations

from typing import Callable, Sequence

from parity.checks.base import SuiteContext, first_per_arch
from parity.checks.registry import make_checks
from parity.core.arch import Variant
from parity.core.compare import CheckResult
from parity.core.rule import DEFAULT_RULE, Float32Rule


def run_suite(variants: Sequence[Variant], dtypes: Sequence[str], devices: Sequence[str], *, seed: int = 0,
              batch: int = 6, params_for: Callable[[Variant], dict | None] | None = None, trained_steps: int = 0,
              xla_compile: str = "fast", control=None, tf32_drift: bool = True,
              checks: Sequence = (), mixed: bool = False, rule: Float32Rule = DEFAULT_RULE) -> tuple[list, list]:
    """(results, meta_runs): every variant on every device and dtype with precision pinned;
    `params_for(variant)`: given weights (None: random); `trained_steps` > 0: the first variant
    of each architecture again after that many Adam steps (at `batch`, in the check's
    master dtype: parity.core.harness.trained_params); on cuda float32 (with
    `tf32_drift`) the frameworks' default precision is also measured, never failing;
    `checks`: names of parity.checks.registry.CHECK_GROUPS (parse_groups) and Check objects;
    `mixed`: the bf16-mixed rows as well (the "mixed" check); `rule`: how float32 is judged
    (parity.core.rule: calibrated by a float64 run of the reference by default)."""
    from parity.core.harness import run_variant
    from parity.core.precision import pinned_precision

    groups = tuple(checks) + (("mixed",) if mixed and "mixed" not in checks else ())
    ctx = SuiteContext(seed=seed, batch=batch, dtypes=tuple(dtypes), devices=tuple(devices), xla_compile=xla_compile,
                       rule=rule, control=control, params_for=params_for)
    active = make_checks(groups)
    results: list[CheckResult] = []
    meta_runs: list = []
    try:
        with pinned_precision(True):
            for c in active:
                c.prepare(variants, ctx)
        for device in devices:
            for dtype in dtypes:
                with pinned_precision(True):
                    results += _dtype_pass(variants, dtype, device, ctx, trained_steps, active)
                if tf32_drift and device == "cuda" and dtype == "float32":
                    with pinned_precision(False) as settings:
                        for v in variants:
                            drift = run_variant(v, dtype, device, seed=seed, batch=batch, xla_compile=xla_compile,
                                                rule=rule, keep_compiled=False)
                            for r in drift:
                                r.variant = f"{r.variant} TF32"
                                r.info["informational"] = True
                                r.passed = True
                            results += drift
                    meta_runs.append({"default_precision_settings": settings})
        with pinned_precision(True):
            for c in active:
                results += c.finish()
    finally:
        for c in active:
            c.close()
    return results, meta_runs


def _dtype_pass(variants, dtype: str, device: str, ctx: SuiteContext, trained_steps: int, active) -> list:
    """The rows of one dtype and device: every variant, then the first variant of each
    architecture after training, then the checks' rows. The first variant's executables serve
    its trained run and its checks right after it; every variant's are forgotten once it is
    done."""
    from parity.core.harness import (forget_compiled, master_dtype, objective_checks, release_memory, run_sides,
                                     run_variant, trained_params)

    firsts = first_per_arch(variants)
    rows, trained, check_rows = [], [], []
    for v in variants:
        first = any(f is v for f in firsts)
        params = ctx.params_for(v) if ctx.params_for is not None else None
        sides = run_sides(v, dtype, device, seed=ctx.seed, batch=ctx.batch, params_np=params,
                          xla_compile=ctx.xla_compile, control=ctx.control, rule=ctx.rule, keep_compiled=first)
        del params
        rows += objective_checks(v.arch, v, sides.jax, sides.torch, dtype, device, own=sides.own, rule=ctx.rule)
        sides.jax = None  # compared already
        release_memory(collect=False)
        for c in active:
            check_rows += c.check(v, dtype, device, sides)
        del sides
        if trained_steps > 0 and ctx.random_weights and first:
            # Right after its random-weights run: the same compiled executables serve.
            params = trained_params(v.arch, v, ctx.seed, trained_steps, batch=ctx.batch, xla_compile=ctx.xla_compile,
                                    dtype=master_dtype(dtype))
            for r in run_variant(v, dtype, device, seed=ctx.seed, batch=ctx.batch, params_np=params,
                                 xla_compile=ctx.xla_compile, control=ctx.control, rule=ctx.rule,
                                 keep_compiled=False):
                r.variant = f"{r.variant} trained{trained_steps}"
                trained.append(r)
            del params
        forget_compiled(v)
        release_memory()
    # reported in this order, as ever: the variants, the trained ones, the checks
    return rows + trained + check_rows
