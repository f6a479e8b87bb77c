"""Hyperparameters of the improved MeanFlow (iMF) and pixel MeanFlow (pMF) objectives.

Pure Python, shared by both backends. Every number the iMF / pMF losses, their drawing
functions and their samplers use is a field here; the loss functions take the config object.

Defaults are the official JAX code's: iMF (github.com/Lyy-iiis/imeanflow, `imf.py` class
fields and `configs/default.py`, `configs/train_config.yml` for the sampling defaults) and
pMF (github.com/Lyy-iiis/pMF, `pmf.py` class fields and `configs/default.py`). The official
training recipes of each published model are presets (`IMF_PRESETS`, `PMF_PRESETS`).

Fields the official code hard-codes are fields here with the hard-coded value as default:
the guidance-interval ranges (t_min ~ U(0, 0.5), t_max ~ U(0.5, 1)), iMF's guidance ceiling
(`sample_cfg_scale(bz, s_max=7.0)`, named `cfg_max` as in pMF), pMF's t clip (0.05) and the
share of uniform (t, r) draws under `tr_uniform` (0.1).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from meanflow_common.fields import check_range, check_types

__all__ = ["IMFConfig", "PMFConfig", "IMF_PRESETS", "PMF_PRESETS"]


@dataclass(frozen=True)
class _GuidedMeanFlowFields:
    """The fields iMF and pMF share (same names, same meaning)."""

    # (t, r): two logit-normal draws sigmoid(P_std n + P_mean)
    P_mean: float = -0.4
    P_std: float = 1.0
    # the first floor(B * data_proportion) samples get r = t ("fm" samples)
    data_proportion: float = 0.5
    # training guidance scale omega in [1, 1 + cfg_max]: u ~ U(0, 1); cfg_beta == 1:
    # omega = (1 + cfg_max) ** u; else (1 + u ((1 + cfg_max)^(1 - beta) - 1))^(1 / (1 - beta))
    cfg_beta: float = 1.0
    cfg_max: float = 7.0
    # training guidance interval: t_min ~ U(t_min_low, t_min_high), t_max ~ U(t_max_low, t_max_high);
    # fm samples get [0, 1]
    t_min_low: float = 0.0
    t_min_high: float = 0.5
    t_max_low: float = 0.5
    t_max_high: float = 1.0
    # num_drop = #{U(0, 1) < class_dropout_prob}; the first num_drop samples are dropped
    class_dropout_prob: float = 0.1
    # adaptive weight l / sg((l + norm_eps) ** norm_p), applied to each loss term
    norm_p: float = 1.0
    norm_eps: float = 0.01
    # sampling: linspace(1, 0, num_steps + 1), guidance scale and interval fed to the network
    num_steps: int = 1
    sample_omega: float = 7.5
    sample_t_min: float = 0.4
    sample_t_max: float = 0.65

    def __post_init__(self):
        check_types(self)
        check_range(self, "P_std", 0.0, lo_open=True, why="the logit-normal's scale")
        for name in ("data_proportion", "class_dropout_prob", "t_min_low", "t_min_high", "t_max_low", "t_max_high",
                     "sample_t_min", "sample_t_max"):
            check_range(self, name, 0.0, 1.0)
        check_range(self, "cfg_beta", 0.0)
        check_range(self, "cfg_max", 0.0, why="omega is drawn in [1, 1 + cfg_max]")
        for lo, hi in (("t_min_low", "t_min_high"), ("t_max_low", "t_max_high"), ("sample_t_min", "sample_t_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{type(self).__name__}.{lo}={getattr(self, lo)} > {hi}={getattr(self, hi)}: "
                                 "the interval would be empty")
        check_range(self, "norm_p", 0.0)
        check_range(self, "norm_eps", 0.0)
        if self.norm_p > 0 and self.norm_eps == 0:
            raise ValueError(f"{type(self).__name__}.norm_eps=0 with norm_p={self.norm_p} divides 0 by 0 on a "
                             "sample whose loss is 0; use norm_eps > 0")
        check_range(self, "num_steps", 1)
        check_range(self, "sample_omega", 1.0, why="the network sees 1 - 1/omega; omega = 1 is no guidance")


@dataclass(frozen=True)
class IMFConfig(_GuidedMeanFlowFields):
    """improved MeanFlow (imeanflow `imf.py`): every field is shared with `PMFConfig`.

    The sampling defaults (omega 7.5, interval [0.4, 0.65], 1 step) are `train_config.yml`'s;
    the recommendations of `eval_config.yml` for the published checkpoints are presets.
    """


@dataclass(frozen=True)
class PMFConfig(_GuidedMeanFlowFields):
    """pixel MeanFlow (pMF `pmf.py`): the iMF fields plus the pixel-space ones.

    e = noise_scale N(0, I); velocities are (z - x_pred) / clip(t, t_clip_min, 1). With
    tr_uniform, each sample's (t, r) is replaced by two U(0, 1) draws with probability
    tr_uniform_prob (before the r = t prefix and the max/min). The perceptual terms act where
    t < perceptual_max_t: lpips_lambda * w(d_lpips) + convnext_lambda * w(d_convnext), each
    adaptively weighted like the other terms. `lpips` / `convnext` switch a term on; the loss
    then needs its hook (`pmf_loss(..., perceptual=PerceptualHooks(...))`).
    """

    P_mean: float = -0.4
    P_std: float = 1.0
    noise_scale: float = 1.0
    t_clip_min: float = 0.05
    tr_uniform: bool = False
    tr_uniform_prob: float = 0.1
    lpips: bool = False
    lpips_lambda: float = 1.0
    convnext: bool = False
    convnext_lambda: float = 0.0
    perceptual_max_t: float = 1.0
    # sampling defaults of pMF-B/16 (configs/pMF_B_16_config.yml)
    sample_omega: float = 8.5
    sample_t_min: float = 0.1
    sample_t_max: float = 0.7

    def __post_init__(self):
        super().__post_init__()
        check_range(self, "noise_scale", 0.0, lo_open=True)
        check_range(self, "t_clip_min", 0.0, 1.0, lo_open=True, why="velocities divide by clip(t, t_clip_min, 1)")
        check_range(self, "tr_uniform_prob", 0.0, 1.0)
        check_range(self, "lpips_lambda", 0.0)
        check_range(self, "convnext_lambda", 0.0)
        check_range(self, "perceptual_max_t", 0.0, 1.0)

    @property
    def perceptual(self) -> bool:
        """True when any perceptual term is on (the loss then computes pred_x = z - t u)."""
        return self.lpips or self.convnext


# The published iMF checkpoints' sampling recommendations (eval_config.yml comments).
_IMF_SAMPLING = {
    "iMF-B/2": (1, 8.0, 0.4, 0.65),
    "iMF-M/2": (1, 10.5, 0.4, 0.6),
    "iMF-L/2": (1, 10.5, 0.4, 0.6),
    "iMF-XL/2": (1, 8.0, 0.42, 0.62),
    "iMF-XL/2-2NFE": (2, 4.0, 0.36, 0.64),
}
IMF_PRESETS: dict[str, IMFConfig] = {
    name: IMFConfig(num_steps=n, sample_omega=w, sample_t_min=lo, sample_t_max=hi)
    for name, (n, w, lo, hi) in _IMF_SAMPLING.items()
}
IMF_PRESETS["default"] = IMFConfig()
# Tests: more fm samples and more dropping so that a batch of 6 reaches every branch.
IMF_PRESETS["tiny"] = IMFConfig(data_proportion=0.34, class_dropout_prob=0.3, num_steps=2, sample_omega=3.0)

_PMF_PERCEPTUAL = dict(lpips=True, lpips_lambda=0.4, convnext=True, convnext_lambda=0.1)
# configs/pMF_*_config.yml: (P_mean, P_std, noise_scale, cfg_beta, perceptual_max_t, and sampling omega, t_min, t_max)
_PMF_RECIPES = {
    "pMF-B/16": (0.8, 0.8, 1.0, 1.0, 0.8, 8.5, 0.1, 0.7),
    "pMF-B/32": (0.8, 0.8, 2.0, 1.0, 0.8, 6.5, 0.1, 0.7),
    "pMF-L/16": (0.8, 0.8, 1.0, 2.0, 0.8, 7.0, 0.2, 0.7),
    "pMF-L/32": (0.0, 0.8, 4.0, 1.0, 0.6, 7.5, 0.2, 0.6),
}
PMF_PRESETS: dict[str, PMFConfig] = {
    name: PMFConfig(P_mean=pm, P_std=ps, noise_scale=ns, cfg_beta=b, perceptual_max_t=pt, sample_omega=w,
                    sample_t_min=lo, sample_t_max=hi, **_PMF_PERCEPTUAL)
    for name, (pm, ps, ns, b, pt, w, lo, hi) in _PMF_RECIPES.items()
}
PMF_PRESETS["default"] = PMFConfig()
PMF_PRESETS["tiny"] = replace(
    PMF_PRESETS["pMF-B/32"], data_proportion=0.34, class_dropout_prob=0.3, num_steps=2, sample_omega=3.0,
    tr_uniform=True, tr_uniform_prob=0.3,
)
