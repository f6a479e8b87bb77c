"""`parity.check`: run the parity suite on any network pair and get a report that explains a failure.

    report = parity.check(MY_ARCH, dtypes=("float64", "float32"))
    report.assert_ok()   # raises ParityError: failing quantities, worst error, the debugger's blame

The command line (`python -m parity`) runs the same `run_suite`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from parity.core.arch import Arch, Variant, archs_of, resolve_variants
from parity.core.compare import CheckResult
from parity.core.rule import DEFAULT_RULE, Float32Rule


class ParityError(AssertionError):
    """The two sides disagree; the message names the failing quantities, the worst error and
    the module the divergence debugger blames."""


@dataclass
class ParityReport:
    """The checks of one run: `results` (one CheckResult per quantity, variant, dtype, device).

    passed: every check passed; failures: the failing checks; format(): the table the
    command line prints; failure_message(): the readable summary `assert_ok` raises.
    """

    results: list
    variants: list
    seed: int = 0
    batch: int = 6
    control: object = None
    elapsed_s: float = 0.0
    meta_runs: list = field(default_factory=list)
    rule: Float32Rule = DEFAULT_RULE
    _blames: dict = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> list:
        return [r for r in self.results if not r.passed]

    def __bool__(self) -> bool:
        return self.passed

    def format(self) -> str:
        from parity.core.report import format_table, format_tolerances

        return format_tolerances(archs_of(self.variants), self.rule) + "\n" + format_table(self.results)

    def blame(self, variant: Variant, dtype: str, device: str) -> str:
        """The debugger's verdict for one failing (variant, dtype, device): "blamed: <module>
        (<reason>)", computed once, with this run's seed, batch, weights and control."""
        key = (id(variant), dtype, device)
        if key not in self._blames:
            try:
                from parity.debug.analyse import analyse, prepare_case

                res = analyse(prepare_case(variant, dtype if dtype in ("float64", "float32") else "float64", device,
                                           seed=self.seed, batch=self.batch, control=self.control))
                self._blames[key] = f"blamed: {res.blamed or '-'} ({res.diagnosis})"
            except Exception as err:  # noqa: BLE001  the failure itself must still be reported
                self._blames[key] = f"blame unavailable: {type(err).__name__}: {err}"
        return self._blames[key]

    def failure_message(self, blame: bool = True) -> str:
        """Per failing (arch, variant, dtype, device): the failing quantities, the worst error
        (max relative error, tolerance, where) and, with `blame`, the debugger's blame line."""
        if self.passed:
            return f"parity: all {len(self.results)} checks passed"
        groups: dict = {}
        for r in self.failures:
            groups.setdefault((r.arch, r.variant, r.dtype, r.device), []).append(r)
        lines = [f"parity: {len(self.failures)} of {len(self.results)} checks failed"]
        by_name = {(v.arch.name, v.name): v for v in self.variants}
        for (arch, name, dtype, device), bad in groups.items():
            worst = max(bad, key=lambda r: r.budget_used)
            budget = (f"budget {worst.tol:.2e} (calibrated: own float32 error {worst.info['own_err']:.2e}, "
                      f"fixed tol {worst.info['fixed_tol']:.0e})" if worst.info.get("rule") == "calibrated"
                      else f"tol {worst.tol:.0e}")
            lines.append(f"  {arch} / {name} / {dtype} / {device}: failing {', '.join(r.quantity for r in bad)}; "
                         f"worst {worst.quantity} max rel {worst.max_rel:.3e} > {budget}"
                         f" (max abs {worst.max_abs:.3e}{', at ' + worst.where if worst.where else ''})")
            variant = by_name.get((arch, name))
            if blame and variant is not None:
                lines.append(f"    {self.blame(variant, dtype, device)}")
        return "\n".join(lines)

    def assert_ok(self, blame: bool = True) -> "ParityReport":
        """Raise ParityError with `failure_message()` unless every check passed; returns self."""
        if not self.passed:
            raise ParityError(self.failure_message(blame))
        return self


def run_suite(variants: Sequence[Variant], dtypes: Sequence[str], devices: Sequence[str], *, seed: int = 0,
              batch: int = 6, params_for: Callable[[Variant], dict | None] | None = None, trained_steps: int = 0,
              xla_compile: str = "fast", control=None, tf32_drift: bool = True,
              checks: Sequence[str] = (), mixed: bool = False, rule: Float32Rule = DEFAULT_RULE) -> tuple[list, list]:
    """(results, meta_runs): every variant on every device and dtype with precision pinned;
    `params_for(variant)`: given weights (None: random); `trained_steps` > 0: the first variant
    of each architecture again after that many Adam steps (at `batch`, in the check's
    master dtype: parity.core.harness.trained_params); on cuda float32 (with
    `tf32_drift`) the frameworks' default precision is also measured, never failing;
    `checks`: the groups of parity.extra.checks.CHECK_GROUPS to run as well; `mixed`: the
    float32 bf16-mixed rows (parity.extra.mixed_report), never failing; `rule`: how float32
    is judged (parity.core.rule: calibrated by a float64 run of the reference by default)."""
    from parity.core.harness import run_variant
    from parity.core.precision import pinned_precision
    from parity.extra.checks import once_checks, x64_off_applies

    extra = dict(seed=seed, batch=batch, xla_compile=xla_compile, random_weights=params_for is None, rule=rule)
    x64_rows: list[CheckResult] = []
    # (with a control the x64-off check compares against a clean torch run, so it runs at the end)
    x64_early = control is None and x64_off_applies(checks, params_for is None, dtypes, devices)

    results: list[CheckResult] = []
    meta_runs: list = []
    for device in devices:
        for dtype in dtypes:
            with pinned_precision(True):
                rows, x64 = _dtype_pass(variants, dtype, device, seed=seed, batch=batch, params_for=params_for,
                                        trained_steps=trained_steps, xla_compile=xla_compile, control=control,
                                        rule=rule, checks=checks, extra=extra,
                                        x64_off=x64_early and (dtype, device) == ("float32", "cpu"))
                results += rows
                x64_rows += x64
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
            if mixed and dtype == "float32":
                from parity.extra.mixed_report import mixed_checks

                with pinned_precision(True):
                    results += mixed_checks(variants, device, seed=seed, batch=batch, params_for=params_for)
    with pinned_precision(True):
        results += once_checks(tuple(g for g in checks if g != "x64off") if x64_early else checks, variants,
                               dtypes=dtypes, devices=devices, **extra)
    results += x64_rows  # where once_checks reports them
    return results, meta_runs


def _dtype_pass(variants, dtype: str, device: str, *, seed: int, batch: int, params_for, trained_steps: int,
                xla_compile: str, control, rule: Float32Rule, checks, extra: dict, x64_off: bool) -> tuple[list, list]:
    """(rows, x64-off rows) of one dtype and device: every variant, then the first variant of
    each architecture after training, then the per-dtype checks. The first variant's
    executables serve its trained run and its checks right after it; every variant's are
    forgotten once it is done. `x64_off`: the x64-off child starts before the first variant
    and compiles beside it; it is compared on that variant's torch side."""
    from parity.core.harness import (compile_variant, forget_compiled, master_dtype, release_memory, run_variant,
                                     trained_params)
    from parity.extra.checks import first_per_arch, run_checks

    firsts = {id(v.arch): v for v in reversed(variants)}
    rows, trained, check_rows, x64_rows = [], [], [], []
    x64_run = None
    try:
        for v in variants:
            first = firsts[id(v.arch)] is v
            if x64_off and x64_run is None:
                from parity.extra.x64_off import X64OffRun

                x64_run = X64OffRun(first_per_arch(variants), seed=seed, batch=batch, xla_compile=xla_compile)
                # the parent compiles while the child runs; then one of them at a time holds weights
                compile_variant(v, dtype, device, batch=batch, seed=seed, rule=rule, xla_compile=xla_compile)
                x64_run.wait()
            params = params_for(v) if params_for is not None else None
            sides: dict = {}
            rows += run_variant(v, dtype, device, seed=seed, batch=batch, params_np=params, xla_compile=xla_compile,
                                control=control, rule=rule, keep=sides, keep_compiled=first)
            del params
            sides.pop("jax")  # compared already
            release_memory(collect=False)
            if first:
                check_rows += run_checks(checks, [v], dtype, device, **extra)
            if x64_run is not None and first:
                from parity.extra.x64_off import x64_off_checks

                x64_rows += x64_off_checks([v], seed=seed, batch=batch, xla_compile=xla_compile,
                                           torch_sides={v.name: sides["torch"]}, own={v.name: sides.get("own")},
                                           rule=rule, run=x64_run)
            sides.clear()
            if trained_steps > 0 and params_for is None and first:
                # Right after its random-weights run: the same compiled executables serve.
                params = trained_params(v.arch, v, seed, trained_steps, batch=batch, xla_compile=xla_compile,
                                        dtype=master_dtype(dtype))
                for r in run_variant(v, dtype, device, seed=seed, batch=batch, params_np=params,
                                     xla_compile=xla_compile, control=control, rule=rule, keep_compiled=False):
                    r.variant = f"{r.variant} trained{trained_steps}"
                    trained.append(r)
                del params
            forget_compiled(v)
            release_memory()
    finally:
        if x64_run is not None:
            x64_run.close()
    # reported in this order, as ever: the variants, the trained ones, the checks
    return rows + trained + check_rows, x64_rows


def _variants_of(target, preset: str | None) -> list[Variant]:
    if isinstance(target, str):
        return resolve_variants(target, preset)
    if isinstance(target, Arch):
        return target.default_variants(preset)
    if isinstance(target, Variant):
        return [target]
    if isinstance(target, (list, tuple)) and target and all(isinstance(v, Variant) for v in target):
        return list(target)
    raise TypeError(f"parity.check needs an Arch, a Variant, a non-empty list of Variants or an --arch spec "
                    f"string, got {type(target).__name__}")


def check(target, dtypes: Sequence[str] = ("float32", "float64"), device: str = "cpu", seed: int = 0,
          batch: int = 6, *, preset: str | None = None, trained_steps: int = 0, params: dict | None = None,
          control=None, xla_compile: str = "fast", checks: str | Sequence[str] = "none",
          rule: Float32Rule = DEFAULT_RULE, raise_on_failure: bool = False) -> ParityReport:
    """Compare u, du/dt, v_g, u_tgt, the per-sample loss, the loss and every gradient of the
    two sides of `target` and return the `ParityReport`.

    target: an Arch (its default variants on `preset`), a Variant, a list of Variants, or an
    `--arch` spec string ("dit", "pkg.module:NAME"); dtypes: of "float64", "float32";
    device: "cpu" or "cuda"; seed: weights from `seed`, inputs from seed + 1; batch: the
    batch size B of every input [B, ...]; params: given JAX-layout weights for every variant
    (instead of random); trained_steps: also compare after that many Adam steps; control: a
    negative control injected into the torch side; checks: the extra groups ("all", "none" or
    names of parity.extra.checks.CHECK_GROUPS: branches, samplers, dropout, x64off);
    rule: how float32 is judged (parity.core.rule.Float32Rule: calibrated by a float64 run
    of the reference by default; Float32Rule("fixed") for the tolerance table alone);
    raise_on_failure: raise ParityError
    (as `report.assert_ok()` does) instead of returning a failing report.
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
    from parity.extra.checks import parse_groups

    groups = parse_groups(checks) if isinstance(checks, str) else tuple(checks)
    variants = _variants_of(target, preset)
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
