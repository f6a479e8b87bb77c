"""What a parity run returns: `ParityReport` (the results, the table, the failure summary with
the debugger's blame) and `ParityError`, raised by `assert_ok`."""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable

from parity.core.arch import Variant, archs_of
from parity.core.rule import DEFAULT_RULE, Float32Rule


# The debugger's blame runs by default ("auto") on networks of at most this many weights.
BLAME_BUDGET = 2_000_000


class ParityError(AssertionError):
    """The two sides disagree; the message names the failing quantities, the worst error and
    the module the divergence debugger blames."""


@dataclass
class ParityReport:
    """The checks of one run: `results` (one CheckResult per quantity, variant, dtype, device).

    passed: every check passed; failures: the failing checks; format(): the table the
    command line prints; failure_message(): the readable summary `assert_ok` raises.
    params_for(variant): the given weights of a variant (None: random), for the blame;
    command: the command line's {"arch", "preset", "sets", "checkpoint", "checkpoint_key"},
    repeated by `debug_command`.
    """

    results: list
    variants: list
    seed: int = 0
    batch: int = 6
    control: object = None
    elapsed_s: float = 0.0
    meta_runs: list = field(default_factory=list)
    rule: Float32Rule = DEFAULT_RULE
    params_for: Callable | None = None
    command: dict = field(default_factory=dict)
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

                params = self.params_for(variant) if self.params_for is not None else None
                res = analyse(prepare_case(variant, dtype if dtype in ("float64", "float32") else "float64", device,
                                           seed=self.seed, batch=self.batch, params_np=params, control=self.control))
                self._blames[key] = f"blamed: {res.blamed or '-'} ({res.diagnosis})"
            except Exception as err:  # noqa: BLE001  the failure itself must still be reported
                self._blames[key] = f"blame unavailable: {type(err).__name__}: {err}"
        return self._blames[key]

    def blame_is_cheap(self, variant: Variant) -> bool:
        """Whether the debugger's blame costs about one more run of a small network: at most
        BLAME_BUDGET weights (its shapes only are computed)."""
        import math

        import jax

        from parity.core.harness import param_shapes

        try:
            shapes = jax.tree_util.tree_leaves(param_shapes(variant.arch, variant.model_cfg))
        except Exception:  # noqa: BLE001  then the command is printed instead
            return False
        return sum(math.prod(a.shape) for a in shapes) <= BLAME_BUDGET

    def debug_command(self, variant: Variant, dtype: str, device: str) -> str:
        """The `python -m parity debug` command that reproduces this run of `variant` (its
        seed, batch, weights and control; --arch as the run was given it, else the name the
        registry knows it by or the module attribute that holds it; --objective likewise, for
        a variant of another objective than the default)."""
        from parity.archs.registry import DEFAULT_OBJECTIVE, registered, registered_objectives

        given = self.command.get("arch") or ""
        spec = (given if ":" in given else variant.arch.name if registered().get(variant.arch.name) is variant.arch
                else variant.arch.spec() or variant.arch.name)
        words = ["python -m parity debug", "--arch", spec]
        objective = variant.objective
        if objective is not DEFAULT_OBJECTIVE:
            known = registered_objectives().get(objective.name) is objective
            words += ["--objective", objective.name if known else objective.spec() or objective.name]
        if self.command.get("preset"):
            words += ["--preset", self.command["preset"]]
        for item in self.command.get("sets", ()):
            words += ["--set", item]
        words += ["--variant", variant.name, "--dtype", dtype if dtype in ("float64", "float32") else "float64",
                  "--device", device, "--seed", str(self.seed), "--batch", str(self.batch)]
        if self.command.get("checkpoint"):
            words += ["--checkpoint", self.command["checkpoint"]]
            if self.command.get("checkpoint_key"):
                words += ["--checkpoint-key", self.command["checkpoint_key"]]
        if self.control is not None:
            words += ["--control", self.control.name]
        return " ".join(shlex.quote(w) if i else w for i, w in enumerate(words))

    def failure_message(self, blame: bool | str = True) -> str:
        """Per failing (arch, variant, dtype, device): the failing quantities, the worst error
        (max relative error, tolerance, where) and what explains or reproduces it: the
        debugger's blame line (`blame` True; "auto": when `blame_is_cheap`, else the debug
        command), the command that reproduces it, or what a failing extra check means."""
        if self.passed:
            return f"parity: all {len(self.results)} checks passed"
        groups: dict = {}
        for r in self.failures:
            groups.setdefault((r.arch, r.variant, r.dtype, r.device), []).append(r)
        lines = [f"parity: {len(self.failures)} of {len(self.results)} checks failed"]
        if self.coverage_only:
            lines[0] += (" (branch coverage only: every objective comparison passed; the inputs left some branches "
                         "of the objective unexercised)")
        by_name = {(v.arch.name, v.name): v for v in self.variants}
        for (arch, name, dtype, device), bad in groups.items():
            worst = max(bad, key=lambda r: r.budget_used)
            budget = (f"budget {worst.tol:.2e} (calibrated: own float32 error {worst.info['own_err']:.2e}, "
                      f"fixed tol {worst.info['fixed_tol']:.0e})" if worst.info.get("rule") == "calibrated"
                      else f"tol {worst.tol:.0e}")
            lines.append(f"  {arch} / {name} / {dtype} / {device}: failing {', '.join(r.quantity for r in bad)}; "
                         f"worst {worst.quantity} max rel {worst.max_rel:.3e} > {budget}"
                         f" (max abs {worst.max_abs:.3e}{', at ' + worst.where if worst.where else ''})")
            lines += [f"    {line}" for line in self._explain(by_name.get((arch, name)), name, bad, dtype, device,
                                                              blame)]
        return "\n".join(lines)

    def _explain(self, variant, name: str, bad: list, dtype: str, device: str, blame) -> list:
        from parity.checks.dropout import EVAL_ROW_PREFIX as DROPOUT_PREFIX  # loads the frameworks

        if all(r.quantity == "branches" for r in bad):
            return [f"coverage only: the inputs of batch {self.batch}, seed {self.seed} reach no sample of "
                    f"{', '.join(r.where.removeprefix('unreached: ') for r in bad)}; the objective was compared, "
                    f"but not on these branches: use a larger --batch (e.g. 6) or another --seed"]
        if name.startswith(DROPOUT_PREFIX):
            side = name[len(DROPOUT_PREFIX):]
            who = "the port (torch)" if side == "torch" else "the reference (JAX)"
            return [f"{who} applies dropout at train=False: with its Arch.set_dropout rates > 0 its objective at "
                    f"train=False differs from the rates-0 run on the same weights and inputs"
                    f"{' (the torch module left in training mode: dropout must follow `train`, not module.training)' if side == 'torch' else ''}; "
                    f"every other comparison runs rates 0, so the debugger's variants cannot show it"]
        if variant is None:
            return []
        out = []
        if blame is True or (blame == "auto" and self.blame_is_cheap(variant)):
            out.append(self.blame(variant, dtype, device))
        out.append(f"debug: {self.debug_command(variant, dtype, device)}")
        return out

    @property
    def coverage_only(self) -> bool:
        """Whether the only failing checks are branch coverage (the exit status
        COVERAGE_ONLY_EXIT of the command line)."""
        return not self.passed and all(r.quantity == "branches" for r in self.failures)

    def assert_ok(self, blame: bool = True) -> "ParityReport":
        """Raise ParityError with `failure_message()` unless every check passed; returns self."""
        if not self.passed:
            raise ParityError(self.failure_message(blame))
        return self
