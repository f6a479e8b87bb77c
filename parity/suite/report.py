"""What a parity run returns: `ParityReport` (the results, the table, the failure summary with
the debugger's blame) and `ParityError`, raised by `assert_ok`."""
from __future__ import annotations

from dataclasses import dataclass, field

from parity.core.arch import Variant, archs_of
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
