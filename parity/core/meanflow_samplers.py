"""The MeanFlow objective's samplers check (`MEANFLOW.samplers`): each backend's
`sample_noise` against the other and against the formulas written out in NumPy
(parity.core.sampler_oracle).

The objective comparison feeds both sides one explicit bundle and so bypasses the samplers;
this is what makes a sampler bug in one port fail `python -m parity`. For each config, on a
large draw (N samples, fixed seeds, so the verdict is reproducible):
- "t,r KS": two-sample Kolmogorov-Smirnov statistic of t and of r (the larger) against a
  NumPy draw, tolerance the alpha = 1e-3 critical value; "t,r KS cross" backend vs backend;
- "r = t": rt_mask "first": exactly the first floor(N p) samples have r = t, the rest r < t;
  "random": the fraction of ties within 4.5 binomial standard errors of the NumPy draw's;
- "drop mask": a prefix, its length within 4.5 standard deviations of Binomial(N, prob);
- "shapes": e [N, 2], t, r, drop_mask [N], 0 <= r <= t <= 1.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from meanflow_common.config import MeanFlowConfig
from parity.core import sampler_oracle as oracle
from parity.core.compare import CheckResult

N = 20000
Z = 4.5  # standard errors allowed for counts (two-sided p ~ 7e-6)

# py-meanflow's own time distributions: t ~ logit-normal(-0.6, 1.6), r ~ (-4.0, 1.6).
PY_MEANFLOW_TIMES = dict(P_mean_t=-0.6, P_std_t=1.6, P_mean_r=-4.0, P_std_r=1.6)

# The objective configs of the built-in suite's variants before their per-variant changes
# (parity.archs.dit.DIT_MEANFLOW, parity.archs.flower.FLOWER_MEANFLOW; a test holds them equal):
# class dropout and a half r = t prefix, and no guidance nor dropout.
SUITE_CONFIGS = {
    "dit default": MeanFlowConfig(data_proportion=0.5, class_dropout_prob=0.3),
    "flower default": MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0, data_proportion=0.5),
}


def sampler_configs() -> dict[str, MeanFlowConfig]:
    """The objective configs of the default parity variants, and py-meanflow's two samplers
    (with its own t and r distributions, and v1 with one shared distribution, where t's
    marginal tells v1's "t keeps its own draw" from t = max(t, r))."""
    pym = MeanFlowConfig(rt_mask="random", data_proportion=0.75, **PY_MEANFLOW_TIMES)
    return {
        **SUITE_CONFIGS,
        "first, own t/r dists": replace(SUITE_CONFIGS["dit default"], **PY_MEANFLOW_TIMES),
        "py-meanflow v0": replace(pym, tr_sampler="v0"),
        "py-meanflow v1": replace(pym, tr_sampler="v1"),
        "random v1 one dist": MeanFlowConfig(rt_mask="random", tr_sampler="v1", data_proportion=0.75),
    }


def draw_jax(cfg: MeanFlowConfig, n: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jax_meanflow.objective import sample_noise

    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    noise = sample_noise(jax.random.PRNGKey(seed), (n, 2), cfg, dtype)
    return {k: np.asarray(getattr(noise, k)) for k in ("e", "t", "r", "drop_mask")}


def draw_torch(cfg: MeanFlowConfig, n: int, seed: int) -> dict:
    import torch

    from torch_meanflow.objective import sample_noise

    noise = sample_noise((n, 2), cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {k: getattr(noise, k).numpy() for k in ("e", "t", "r", "drop_mask")}


def _result(name, quantity, value, tol, passed, where="", dtype="float64") -> CheckResult:
    return CheckResult(arch="sampler", variant=name, dtype=dtype, device="cpu", quantity=quantity,
                       max_abs=float(value), max_rel=float(value), tol=float(tol), passed=bool(passed), where=where)


def _ks(a: dict, b: dict, crit: float) -> tuple[float, str]:
    d_t, d_r = oracle.ks_statistic(a["t"], b["t"]), oracle.ks_statistic(a["r"], b["r"])
    return max(d_t, d_r), f"t {d_t:.4f}, r {d_r:.4f}"


def check_draw(name: str, side: str, got: dict, ref: dict, cfg: MeanFlowConfig) -> list[CheckResult]:
    """The four checks of one backend's draw `got` against the NumPy draw `ref`."""
    n, dtype = got["t"].shape[0], str(got["t"].dtype)
    out = []
    crit = oracle.ks_critical(n, ref["t"].shape[0])
    d, where = _ks(got, ref, crit)
    out.append(_result(name, f"{side} t,r KS", d, crit, d <= crit, where, dtype))

    t, r = got["t"], got["r"]
    tied = t == r
    if cfg.rt_mask == "first":
        n_eq = math.floor(n * cfg.data_proportion)
        wrong = int(np.sum(~tied[:n_eq]) + np.sum(r[n_eq:] >= t[n_eq:]))
        out.append(_result(name, f"{side} r = t", wrong, 0, wrong == 0,
                           f"{wrong} samples off the first-{n_eq} prefix", dtype))
    else:
        f_ref, f_got = float(np.mean(ref["t"] == ref["r"])), float(np.mean(tied))
        se = math.sqrt(max(f_ref * (1 - f_ref), 1e-12) * 2 / n)
        out.append(_result(name, f"{side} r = t", abs(f_got - f_ref), Z * se, abs(f_got - f_ref) <= Z * se,
                           f"fraction {f_got:.4f} vs numpy {f_ref:.4f}", dtype))

    mask = np.asarray(got["drop_mask"])
    k = int(mask.sum())
    prefix = bool(np.all(mask[:k])) and not bool(np.any(mask[k:]))
    p = cfg.class_dropout_prob
    dev = abs(k - n * p)
    tol = Z * math.sqrt(n * p * (1 - p))
    out.append(_result(name, f"{side} drop mask", dev, tol, prefix and dev <= tol and mask.dtype == bool,
                       f"{k} dropped, {'a prefix' if prefix else 'NOT a prefix'}, expected {n * p:.0f}", dtype))

    shapes_ok = (got["e"].shape == (n, 2) and t.shape == r.shape == mask.shape == (n,))
    range_ok = bool(np.all((0 <= r) & (r <= t) & (t <= 1)))
    out.append(_result(name, f"{side} shapes", 0 if shapes_ok and range_ok else 1, 0, shapes_ok and range_ok,
                       f"e {got['e'].shape}, t {t.shape}, r {r.shape}, drop {mask.shape}; "
                       f"0<=r<=t<=1 {'holds' if range_ok else 'VIOLATED'}", dtype))
    return out


def sampler_checks(n: int = N, seed: int = 0, draw_jax=draw_jax, draw_torch=draw_torch) -> list[CheckResult]:
    """Every check above for every `sampler_configs()` entry (the draw functions are
    parameters so a test can inject a broken sampler)."""
    results = []
    for i, (name, cfg) in enumerate(sampler_configs().items()):
        rng = np.random.default_rng(seed + 100 + i)
        t, r = oracle.draw_tr(rng, n, cfg)
        ref = {"t": t, "r": r}
        got_j, got_t = draw_jax(cfg, n, seed + i), draw_torch(cfg, n, seed + i)
        results += check_draw(name, "jax", got_j, ref, cfg)
        results += check_draw(name, "torch", got_t, ref, cfg)
        crit = oracle.ks_critical(n, n)
        d, where = _ks(got_j, got_t, crit)
        results.append(_result(name, "t,r KS cross", d, crit, d <= crit, where))
    return results
