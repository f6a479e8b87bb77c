"""Dropout rates with train=False: the result must equal the zero-rate result on both sides.

Every other comparison zeroes the dropout rates (masks cannot match across frameworks), so a
port that ignores `train` (applies dropout in evaluation, or follows `module.training`)
would look identical there. Here the model has non-zero rates, the objective runs with
train=False (the torch module left in training mode), and each side is compared with its
own zero-rate result on the same weights and inputs.
"""
from __future__ import annotations

from dataclasses import replace

from parity import convert
from parity.core.arch import Variant
from parity.core.compare import CheckResult, compare, compare_grads
from parity.core.harness import (TERMS, forget_compiled, master_dtype, random_params, run_jax, run_torch,
                                 summarise_grads)
from parity.core.tolerances import tolerance

RATES = dict(attn_pdrop=0.1, resid_pdrop=0.1, mlp_pdrop=0.1, proprio_pdrop=0.2)


def has_dropout(variant: Variant) -> bool:
    """Whether the variant's model config has dropout rates to set."""
    return any(hasattr(variant.model_cfg, k) for k in RATES)


def with_dropout(variant: Variant) -> Variant:
    """The variant with FLOWER's non-zero dropout rates (fields that the model config has)."""
    fields = {k: v for k, v in RATES.items() if hasattr(variant.model_cfg, k)}
    if not fields:
        raise ValueError(f"{variant.arch.name} variant {variant.name!r} has no dropout rates to set")
    return replace(variant, name=f"{variant.name} p>0", model_cfg=replace(variant.model_cfg, **fields))


def dropout_eval_checks(variant: Variant, dtype: str, device: str = "cpu", *, seed: int = 0, batch: int = 6,
                        xla_compile: str = "fast") -> list[CheckResult]:
    """Every objective term and the worst gradient, rates > 0 vs rates = 0, per side (one
    side's pair of runs at a time, freed once compared)."""
    arch = variant.arch
    dropped = with_dropout(variant)
    params = random_params(arch, variant, seed, master_dtype(dtype))
    state = convert.jax_to_torch(params, arch.table, variant.model_cfg)
    bundle = arch.make_bundle(variant, batch, seed + 1)
    runs = {
        "jax": lambda v, rates: run_jax(arch, v, params, bundle, dtype, device, xla_compile),
        "torch": lambda v, rates: run_torch(arch, v, state, bundle, dtype, device, module_train=rates),
    }
    results = []
    for side, run in runs.items():
        zero, rates = run(variant, False), run(dropped, True)
        labels = dict(arch=arch.name, variant=f"p>0 eval {side}", dtype=dtype, device=device)
        for k in TERMS:
            results.append(compare(zero.terms[k], rates.terms[k], quantity=k,
                                   tol=tolerance(dtype, device, k, arch), **labels))
        grads = compare_grads(zero.grads, rates.grads, tol=tolerance(dtype, device, "grad", arch), **labels)
        results.append(summarise_grads(grads))
        del zero, rates, grads
    forget_compiled(dropped)  # used here only
    return results
