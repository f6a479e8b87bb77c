"""The pixel MeanFlow (pMF) objective as a plug-in of the harness: `PMF` (`--objective pmf`).

Its implementations are `jax_meanflow.pmf_objective.pmf_loss` and its torch twin, called
through the x-prediction call `net(z, t, h, omega, t_min, t_max, y) -> (x_u, x_v)`
(`PMF_CALL`; the loss converts both to velocities, (z - x) / clip(t, t_clip_min, 1), inside
the function its JVP differentiates). The bundle is iMF's (`parity.core.imf.GuidedBundle`)
drawn by `meanflow_common.imf_draws.draw_pmf` (e times noise_scale, pMF's (t, r) order,
uniform (t, r) under tr_uniform), moved so that one batch also has a t below t_clip_min and
a t at or above perceptual_max_t.

The perceptual terms: two frozen feature networks (`aux`: "lpips" and "convnext", each a
randomly initialised tiny ConvNeXt pair, `parity.core.convnext_aux`), each distance
sum_F (f(pred_x) - f(x))^2, so that both terms' masking (t < perceptual_max_t), adaptive
weighting, lambdas and gradient path are compared. The real LPIPS and pretrained ConvNeXt
are the user's: another `AuxNet` in `dataclasses.replace(PMF, aux=...)` (docs/EXTENDING.md).
Compared: iMF's quantities, pred_x, the mask, both distances and weighted terms, their sum.
Importing this module loads no framework.
"""
from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from meanflow_common import imf_draws
from meanflow_common.objective_configs import PMF_PRESETS, PMFConfig
from parity.core import imf
from parity.core.convnext_aux import CONVNEXT, FEATURES, random_features_params
from parity.core.imf_controls import PMF_CONTROLS, PMF_NO_OP
from parity.core.objective import AuxNet, Convention, Objective, Quantity, same_shape_as_first

PMF_CALL = Convention("pmf", "net(z, t, h, omega, t_min, t_max, y) -> (x_u, x_v) (clean-image predictions of z's "
                             "shape; t, h, omega, t_min, t_max [B]; y int [B], the null class num_classes)",
                      check=same_shape_as_first)


def make_bundle(variant, batch: int, seed: int, **_options) -> imf.GuidedBundle:
    """pMF's bundle: `imf.guided_bundle` with `imf_draws.draw_pmf`, covering t < t_clip_min
    and, with a perceptual term on, t >= perceptual_max_t."""
    cfg = variant.mf_cfg
    return imf.guided_bundle(variant, batch, seed, imf_draws.draw_pmf, low_t=cfg.t_clip_min,
                             high_t=cfg.perceptual_max_t if cfg.perceptual else None)


def _jax_inputs(variant, bundle, dtype):
    from jax_meanflow.pmf_objective import PMFNoise

    return imf.jax_inputs(variant, bundle, dtype, PMFNoise)


def _torch_inputs(variant, bundle, dtype, device):
    from torch_meanflow.pmf_objective import PMFNoise

    return imf.torch_inputs(variant, bundle, dtype, device, PMFNoise)


def feature_distance(features):
    """(pred_x, x) -> [B]: sum over features of (f(pred_x) - f(x))^2, either framework."""
    def distance(pred_x, x):
        return ((features(pred_x) - features(x)) ** 2).sum(-1)

    return distance


def _hooks(cls, cfg: PMFConfig, aux: dict):
    return cls(lpips=feature_distance(aux["lpips"]) if cfg.lpips else None,
               convnext=feature_distance(aux["convnext"]) if cfg.convnext else None)


def _jax_loss(net, inputs, cfg: PMFConfig, aux=None) -> dict:
    from jax_meanflow.pmf_objective import PerceptualHooks, pmf_loss

    x, y, noise, null = inputs
    out = pmf_loss(net, x, y, noise, cfg, null, perceptual=_hooks(PerceptualHooks, cfg, aux or {}))
    return {f.name: getattr(out, f.name) for f in fields(out)}


def _torch_loss(net, inputs, cfg: PMFConfig, jvp=None, aux=None) -> dict:
    import torch_meanflow.pmf_objective as tpmf  # looked up at call time: the controls patch its functions

    x, y, noise, null = inputs
    return tpmf.pmf_loss(net, x, y, noise, cfg, null, perceptual=_hooks(tpmf.PerceptualHooks, cfg, aux or {}),
                         jvp=jvp).as_dict()


# the two stand-in feature networks' weights: fixed, whatever the run's seed
LPIPS_SEED, CONVNEXT_SEED = 4242, 4343

TINY = PMF_PRESETS["tiny"]  # pMF-B/32's recipe (noise_scale 2, perceptual_max_t 0.6), tr_uniform, both terms on


def variants(arch, model_cfg):
    """With both perceptual terms (the tiny preset: guidance, class dropout, tr_uniform), and
    without them (no perceptual term, guidance off, no class dropout)."""
    return [("pmf perceptual", model_cfg, TINY),
            ("pmf no perceptual, unguided", model_cfg,
             replace(TINY, lpips=False, convnext=False, cfg_max=0.0, class_dropout_prob=0.0, tr_uniform=False))]


def branches(bundle, cfg: PMFConfig) -> dict[str, int]:
    """iMF's branches, and t below and at or above t_clip_min (the clip acts, or not); with a
    perceptual term on, t below perceptual_max_t (the terms count) and, when it is < 1, at
    or above it (masked)."""
    t = np.asarray(bundle.t)
    out = imf.branches(bundle, cfg)
    out["t < t_clip_min (clip acts)"] = int(np.sum(t < cfg.t_clip_min))
    out["t >= t_clip_min"] = int(np.sum(t >= cfg.t_clip_min))
    if cfg.perceptual:
        out["t < perceptual_max_t (terms on)"] = int(np.sum(t < cfg.perceptual_max_t))
        if cfg.perceptual_max_t < 1.0:
            out["t >= perceptual_max_t (masked)"] = int(np.sum(t >= cfg.perceptual_max_t))
    return out


def _samplers(seed: int) -> list:
    from parity.core.imf_samplers import pmf_sampler_checks

    return pmf_sampler_checks(seed=seed)


HINTS = imf.HINTS[:-3] + (
    ("pred_x", "pred_x differs while u agrees: pred_x = z_t - t u"),
    ("perceptual_mask", "the perceptual mask differs: the terms count where t < perceptual_max_t"),
    ("lpips_dist", "the LPIPS distance differs while pred_x agrees: the masking or the feature network's input"),
    ("convnext_dist", "the ConvNeXt distance differs while pred_x agrees: the masking or the feature network's input"),
    ("loss_lpips", "the weighted LPIPS term differs while its distance agrees: lambda l / (l + eps)^p"),
    ("loss_convnext", "the weighted ConvNeXt term differs while its distance agrees: lambda l / (l + eps)^p"),
    ("loss_aux", "the perceptual sum differs while its terms agree"),
) + imf.HINTS[-3:]
HINTS = tuple((q, h.replace("(not e - x)", "(not the flow-matching velocity); u and v are (z - x) / clip(t, "
                            "t_clip_min, 1) of the network's x-predictions") if q == "du_dt" else h) for q, h in HINTS)

QUANTITIES = imf.QUANTITIES[:-2] + (
    Quantity("pred_x", tol="u", data=True, nonzero=True),
    Quantity("perceptual_mask", tol="loss"),
    Quantity("lpips_dist", tol="loss_per_sample"),
    Quantity("convnext_dist", tol="loss_per_sample"),
    Quantity("loss_lpips", tol="loss_per_sample"),
    Quantity("loss_convnext", tol="loss_per_sample"),
    Quantity("loss_aux", tol="loss_per_sample"),
) + imf.QUANTITIES[-2:]

PMF = Objective(
    name="pmf",
    convention=PMF_CALL,
    config_type=PMFConfig,
    quantities=QUANTITIES,
    loss="loss",
    make_bundle=make_bundle,
    jax_inputs=_jax_inputs,
    torch_inputs=_torch_inputs,
    jax_loss=_jax_loss,
    torch_loss=_torch_loss,
    variants=variants,
    check_variant=imf.check_variant,
    branches=branches,
    samplers=_samplers,
    controls=PMF_CONTROLS,
    no_op_changes=PMF_NO_OP,
    jvp_point=imf.jvp_point,
    jvp_call=imf.jvp_call,  # the network's x-predictions: the conversion is the objective's, outside its modules
    jvp_terms=("u", "du_dt"),
    hints=HINTS,
    aux={"lpips": AuxNet(CONVNEXT, FEATURES, params=random_features_params(LPIPS_SEED)),
         "convnext": AuxNet(CONVNEXT, FEATURES, params=random_features_params(CONVNEXT_SEED))},
)
