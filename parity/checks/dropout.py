"""Dropout rates with train=False: the result must equal the zero-rate result on both sides.

An architecture declares its rates with `Arch.set_dropout(model_cfg, on)`: the config with
non-zero test rates (on) or every rate 0 (off). Every other comparison zeroes the rates
(masks cannot match across frameworks), so a port that ignores `train` (applies dropout in
evaluation, or follows `module.training`) would look identical there. Here the model has non-zero rates, the objective runs with
train=False (the torch module left in training mode), and each side is compared with its
own zero-rate result on the same weights and inputs.
"""
from __future__ import annotations

from dataclasses import replace

from parity import convert
from parity.core.arch import Variant
from parity.checks.base import Check, is_first_of_arch
from parity.core.compare import CheckResult, compare, compare_grads
from parity.core.harness import (forget_compiled, master_dtype, random_params, run_jax, run_torch,
                                 summarise_grads, variant_bundle)
from parity.core.tolerances import tolerance


# The variant label of this check's rows is EVAL_ROW_PREFIX + the side ("jax", "torch").
EVAL_ROW_PREFIX = "p>0 eval "


def has_dropout(variant: Variant) -> bool:
    """Whether the variant's architecture declares a dropout hook (`Arch.set_dropout`)."""
    return variant.arch.set_dropout is not None


def with_dropout(variant: Variant) -> Variant:
    """The variant with its architecture's non-zero test dropout rates (`Arch.set_dropout`)."""
    if not has_dropout(variant):
        raise ValueError(f"{variant.arch.name} has no dropout hook (Arch.set_dropout) to set rates with")
    return replace(variant, name=f"{variant.name} p>0", model_cfg=variant.arch.set_dropout(variant.model_cfg, True))


def dropout_eval_checks(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                        xla_compile: str = "fast") -> list[CheckResult]:
    """Every objective term and the worst gradient, rates > 0 vs rates = 0, per side (one
    side's pair of runs at a time, freed once compared)."""
    arch = variant.arch
    dropped = with_dropout(variant)
    params = random_params(arch, variant, seed, master_dtype(dtype))
    state = convert.jax_to_torch(params, arch.table, variant.model_cfg)
    bundle = variant_bundle(variant, batch, seed)
    runs = {
        "jax": lambda v, rates: run_jax(arch, v, params, bundle, dtype, device, xla_compile),
        "torch": lambda v, rates: run_torch(arch, v, state, bundle, dtype, device, module_train=rates),
    }
    results = []
    for side, run in runs.items():
        zero, rates = run(variant, False), run(dropped, True)
        labels = dict(arch=arch.name, variant=f"{EVAL_ROW_PREFIX}{side}", dtype=dtype, device=device)
        for q in variant.objective.quantities:
            results.append(compare(zero.terms[q.name], rates.terms[q.name], quantity=q.name,
                                   tol=tolerance(dtype, device, q.name, arch, q.tol_class), **labels))
        grads = compare_grads(zero.grads, rates.grads, tol=tolerance(dtype, device, "grad", arch), **labels)
        results.append(summarise_grads(grads))
        del zero, rates, grads
    forget_compiled(dropped)  # used here only
    return results


class DropoutCheck(Check):
    """"dropout": per dtype and device, the first variant of each architecture with a dropout
    hook, random weights only (it draws its own)."""

    name = "dropout"

    def check(self, variant, dtype: str, device: str, sides) -> list[CheckResult]:
        ctx = self.ctx
        if not (ctx.random_weights and has_dropout(variant) and is_first_of_arch(variant, self.variants)):
            return []
        return dropout_eval_checks(variant, dtype, device, seed=ctx.seed, batch=ctx.batch,
                                   xla_compile=ctx.xla_compile)
