"""The parity report's bf16-mixed rows (`python -m parity --mixed`, `--checks mixed`): reported, never failed.

Per float32 variant and device, the network's u and du/dt (the JVP at (z_t, t, r) along
(v_g, 1, 0)) of torch under bfloat16 autocast against Flax with its layers at
dtype=bfloat16, param_dtype=float32 (setting "bf16-mixed"), and of torch with autocast off
around the JVP against JAX float32 ("bf16-mixed fp32 JVP"); see parity/debug/mixed.py. Each
row's info also gives both sides' error against float32 JAX, the reference at this level.
"""
from __future__ import annotations

from parity.checks.base import Check
from parity.core.compare import CheckResult, error_stats
from parity.core.tolerances import tolerance


def _rel(ref, got):
    return error_stats(ref, got)[1]


def mixed_checks(variants, device: str, *, seed: int, batch: int, params_for=None) -> list[CheckResult]:
    """Informational CheckResults (passed=True, info["informational"]) for every variant;
    `params_for(variant)`: given JAX-layout weights (None: the harness's random ones)."""
    from parity.debug import prepare_case
    from parity.debug.mixed import mixed_rows
    from parity.debug.modes import jax_u_du

    results = []
    for v in variants:
        params = params_for(v) if params_for is not None else None
        case = prepare_case(v, "float32", device, seed=seed, batch=batch, params_np=params)
        f32 = jax_u_du(case, "float32")
        for row in mixed_rows(case, *f32, f32, _rel):
            if row["backend"] != "torch":
                continue
            jvp_in_autocast = row["setting"] == "bf16-mixed"
            where = "JVP in autocast, vs Flax bf16 layers" if jvp_in_autocast else "JVP fp32, vs JAX float32"
            for q in ("u", "du_dt"):
                results.append(CheckResult(
                    v.arch.name, f"{v.name} bf16-mixed", "float32", device, q,
                    row[f"{q}_abs_vs_jax"], row[f"{q}_rel_vs_jax"], tolerance("float32", device, q, v.arch), True,
                    where, info={"informational": True, "note": row["note"],
                                 "torch_rel_vs_float32_jax": row[f"{q}_rel"]}))
    return results


class MixedCheck(Check):
    """"mixed": the bf16-mixed rows of each variant per float32 (dtype, device); not in "all"."""

    name = "mixed"
    in_all = False

    def check(self, variant, dtype: str, device: str, sides) -> list[CheckResult]:
        if dtype != "float32":
            return []
        return mixed_checks([variant], device, seed=self.ctx.seed, batch=self.ctx.batch,
                            params_for=self.ctx.params_for)
