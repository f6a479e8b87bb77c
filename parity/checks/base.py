"""The interface of a check beyond the objective comparison, and what the suite tells it.

A check is an object the suite drives through one run:

    check.prepare(variants, ctx)                 once, before the first variant
    rows = check.check(variant, dtype, device, sides)   after each variant's run, per dtype and device
    rows = check.finish()                        once, after the last; reported after every variant
    check.close()                                always, also when the run fails (children, files)

`sides` is that run's `parity.core.harness.Sides` with the reference's outputs already freed
(`sides.jax` is None): the torch side, the reference's own float32 error and the bundle. A
check that needs nothing per variant only implements `finish`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from parity.core.rule import DEFAULT_RULE, Float32Rule


@dataclass(frozen=True)
class SuiteContext:
    """The run a check belongs to: seed (weights; inputs from seed + 1), batch, the dtypes and
    devices of the loop, the XLA:CPU compile mode, the float32 rule, the negative control
    injected into the torch side (None: an honest run) and `params_for(variant)`, the given
    weights (None: random ones)."""

    seed: int = 0
    batch: int = 6
    dtypes: Sequence[str] = ("float32", "float64")
    devices: Sequence[str] = ("cpu",)
    xla_compile: str = "fast"
    rule: Float32Rule = DEFAULT_RULE
    control: object = None
    params_for: Callable | None = field(default=None, compare=False)

    @property
    def random_weights(self) -> bool:
        return self.params_for is None


class Check:
    """One check of the suite (`name`: its `--checks` group). `in_all`: run by `--checks all`
    (the default); a check outside it runs only when named. The default methods do nothing."""

    name: str = ""
    in_all: bool = True

    def prepare(self, variants: Sequence, ctx: SuiteContext) -> None:
        self.variants, self.ctx = list(variants), ctx

    def check(self, variant, dtype: str, device: str, sides) -> list:
        return []

    def finish(self) -> list:
        return []

    def close(self) -> None:
        pass


def first_per_arch(variants) -> list:
    """The first variant of each architecture, in order."""
    seen, out = set(), []
    for v in variants:
        if id(v.arch) not in seen:
            seen.add(id(v.arch))
            out.append(v)
    return out


def is_first_of_arch(variant, variants) -> bool:
    return any(v is variant for v in first_per_arch(variants))
