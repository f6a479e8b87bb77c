"""The iMF and pMF samplers check (`IMF.samplers`, `PMF.samplers`): each backend's
`sample_imf_noise` / `sample_pmf_noise` against the formulas written out in NumPy
(`meanflow_common.imf_draws`) and against the other backend.

The objective comparison feeds both sides one explicit bundle and so bypasses the samplers;
this is what makes a sampler bug in one port fail. For each config, on a large draw (N
samples, fixed seeds, float64):
- "t KS", "r KS": two-sample Kolmogorov-Smirnov statistic of t and r on the mean-flow samples
  against a NumPy draw (the critical value at ALPHA, on the mean-flow samples' count), the logit-normal, pMF's order and
  tr_uniform included; "omega KS" (the cfg-scale power law), "t_min KS", "t_max KS" (the
  interval uniforms) likewise; "t KS cross": backend against backend;
- "fm prefix": exactly the first floor(N data_proportion) samples have r = t and [0, 1],
  the rest r <= t;
- "drop mask": a prefix, its length within 4.5 standard deviations of Binomial(N, prob);
- "e std": the noise's standard deviation against noise_scale (4.5 standard errors).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from meanflow_common import imf_draws
from meanflow_common.objective_configs import IMF_PRESETS, PMF_PRESETS
from parity.core.compare import CheckResult
from parity.core.sampler_oracle import ks_critical, ks_statistic

N = 20000
Z = 4.5
# about 14 KS statistics per objective and run: alpha 1e-4 each keeps the family's false-alarm
# rate near 1e-3 (at alpha 1e-3 seed 0 gave one false alarm at p ~ 1.5e-4)
ALPHA = 1e-4
FIELDS = ("e", "t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")


def imf_sampler_configs() -> dict:
    """The suite's guided config (cfg_beta = 1: omega log-uniform)."""
    return {"imf tiny": IMF_PRESETS["tiny"]}


def pmf_sampler_configs() -> dict:
    """The suite's config (tr_uniform, noise_scale 2) and pMF-L/16's (cfg_beta = 2, no tr_uniform)."""
    return {"pmf tiny": PMF_PRESETS["tiny"], "pmf L/16": replace(PMF_PRESETS["pMF-L/16"], class_dropout_prob=0.2)}


def _x64() -> bool:
    import jax

    return bool(jax.config.jax_enable_x64)


# (module of each backend, its drawing function, the NumPy oracle's)
IMF_SAMPLER = ("imf_objective", "sample_imf_noise", imf_draws.draw_imf)
PMF_SAMPLER = ("pmf_objective", "sample_pmf_noise", imf_draws.draw_pmf)


def _sample_fn(package: str, sampler: tuple):
    import importlib

    return getattr(importlib.import_module(f"{package}.{sampler[0]}"), sampler[1])


def draw_jax(sampler: tuple, cfg, n: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    sample = _sample_fn("jax_meanflow", sampler)
    noise = sample(jax.random.PRNGKey(seed), (n, 2), cfg, jnp.float64 if _x64() else jnp.float32)
    return {k: np.asarray(getattr(noise, k)) for k in FIELDS}


def draw_torch(sampler: tuple, cfg, n: int, seed: int) -> dict:
    import torch

    sample = _sample_fn("torch_meanflow", sampler)
    noise = sample((n, 2), cfg, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {k: getattr(noise, k).numpy() for k in FIELDS}


def _row(label: str, quantity: str, value: float, tol: float, passed: bool, where: str) -> CheckResult:
    return CheckResult(arch="sampler", variant=label, dtype="float64", device="cpu", quantity=quantity,
                       max_abs=float(value), max_rel=float(value), tol=float(tol), passed=bool(passed), where=where)


def check_draw(label: str, side: str, got: dict, ref: imf_draws.IMFDraws, cfg, n: int) -> list[CheckResult]:
    """One backend's draw `got` ({field: array}) against the NumPy draw `ref` of the same config."""
    out = []
    n_fm = imf_draws.num_fm(n, cfg.data_proportion)
    keep = np.arange(n) >= n_fm
    crit = ks_critical(int(keep.sum()), int(keep.sum()), ALPHA)
    for k in ("t", "r", "omega", "t_min", "t_max"):
        if k == "omega" and cfg.cfg_max == 0:
            continue
        d = ks_statistic(np.asarray(got[k])[keep], getattr(ref, k)[keep])
        out.append(_row(label, f"{side} {k} KS", d, crit, d <= crit, f"{k} {d:.4f}"))
    fm, t, r = np.asarray(got["fm_mask"], bool), np.asarray(got["t"]), np.asarray(got["r"])
    lo, hi = np.asarray(got["t_min"]), np.asarray(got["t_max"])
    bad = int(np.sum(fm != (np.arange(n) < n_fm)) + np.sum(r[fm] != t[fm]) + np.sum(r > t)
              + np.sum(lo[fm] != 0) + np.sum(hi[fm] != 1))
    out.append(_row(label, f"{side} fm prefix", bad, 0, bad == 0,
                    f"first {n_fm} r = t, [0, 1]; {bad} samples off"))
    drop = np.asarray(got["drop_mask"], bool)
    k = int(drop.sum())
    p = cfg.class_dropout_prob
    sd = math.sqrt(max(n * p * (1 - p), 1e-12))
    prefix = bool(np.all(drop[:k])) and not drop[k:].any()
    dev = abs(k - n * p) / sd
    out.append(_row(label, f"{side} drop mask", dev, Z, prefix and dev <= Z,
                    f"{k} dropped (expected {n * p:.0f}), prefix {prefix}"))
    e = np.asarray(got["e"])
    scale = getattr(cfg, "noise_scale", 1.0)  # iMF's noise is N(0, I)
    dev = abs(float(np.std(e)) - scale)
    se = Z * scale / math.sqrt(2 * e.size)
    ok = e.shape == (n, 2) and all(np.shape(got[f]) == (n,) for f in FIELDS[1:])
    out.append(_row(label, f"{side} e std", dev, se, ok and dev <= se, f"std {np.std(e):.4f} vs {scale}; shapes {ok}"))
    return out


def sampler_checks(sampler: tuple, configs: dict, seed: int = 0, n: int = N, draw_jax=draw_jax,
                   draw_torch=draw_torch) -> list[CheckResult]:
    """Per config and backend `check_draw` rows, then t backend against backend. The draw
    functions are parameters so that a test can inject a broken sampler."""
    numpy_draw = sampler[2]
    out = []
    for i, (label, cfg) in enumerate(configs.items()):
        ref = numpy_draw(np.random.default_rng(seed + 100 + i), (n, 2), cfg)
        draws = {}
        for side, draw in (("jax", draw_jax), ("torch", draw_torch)):
            draws[side] = draw(sampler, cfg, n, seed + i)
            out += check_draw(label, side, draws[side], ref, cfg, n)
        keep = np.arange(n) >= imf_draws.num_fm(n, cfg.data_proportion)
        d = ks_statistic(np.asarray(draws["jax"]["t"])[keep], np.asarray(draws["torch"]["t"])[keep])
        crit = ks_critical(int(keep.sum()), int(keep.sum()), ALPHA)
        out.append(_row(label, "t KS cross", d, crit, d <= crit, f"t {d:.4f}"))
    return out


def imf_sampler_checks(seed: int = 0, n: int = N, **draws) -> list[CheckResult]:
    return sampler_checks(IMF_SAMPLER, imf_sampler_configs(), seed, n, **draws)


def pmf_sampler_checks(seed: int = 0, n: int = N, **draws) -> list[CheckResult]:
    return sampler_checks(PMF_SAMPLER, pmf_sampler_configs(), seed, n, **draws)
