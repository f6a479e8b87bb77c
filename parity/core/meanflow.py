"""The MeanFlow objective as a plug-in of the harness: `MEANFLOW`, the default objective.

Its implementations are `jax_meanflow.objective.meanflow_loss` (the reference, `jax.jvp`)
and `torch_meanflow.objective.meanflow_loss` (the port), called through the Arch's
`u_fn(z, t, h, y, train) -> u` (`parity.core.objective.U_FN`: `Arch.jax_u_fn` /
`Arch.torch_u_fn`). Its bundle is the Arch's own (`Arch.make_bundle`: data x, conditioning
y, noise e, times (t, r), class-dropout mask), or, for an Arch that only draws its data
(`Arch.make_data`), the same draws made here in the same order. Compared: u, du/dt, v_g,
u_tgt, the per-sample loss, the loss and every parameter's gradient of the loss.

Importing this module loads no framework (the implementations import theirs when called).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from meanflow_common.config import MeanFlowConfig
from parity.core.controls import NO_OP_PORTING_CHANGES, OBJECTIVE_CONTROLS
from parity.core.inputs import InputBundle, cover_guidance_window, drop_mask_numpy, sample_tr_numpy
from parity.core.objective import U_FN, JvpPoint, Objective, ObjectiveMismatch, Quantity

QUANTITIES = (
    Quantity("u", data=True, nonzero=True),
    Quantity("du_dt", data=True, nonzero=True),  # agreement on u = du/dt = 0 proves nothing
    Quantity("v_g", data=True),
    Quantity("u_tgt", data=True),
    Quantity("loss_per_sample"),
    Quantity("loss"),
)


def make_bundle(variant, batch: int, seed: int, **options) -> InputBundle:
    """The Arch's bundle (`Arch.make_bundle`); without one, its data (`Arch.make_data(model_cfg,
    batch, rng, **options) -> (x, y)`) then, from the same generator, e ~ N(0, I), (t, r)
    (`sample_tr_numpy`), the drop mask and the guidance-window cover."""
    arch = variant.arch
    if arch.make_bundle is not None:
        return arch.make_bundle(variant, batch, seed, **options)
    rng = np.random.default_rng(seed)
    x, y = arch.data(variant.model_cfg, batch, rng, **options)
    cfg = variant.mf_cfg
    e = rng.standard_normal(x.shape)
    t, r = sample_tr_numpy(rng, batch, cfg)
    drop = drop_mask_numpy(rng, batch, cfg.class_dropout_prob)
    t, r = cover_guidance_window(t, r, drop, cfg)
    return InputBundle(arch.name, x, y, e, t, r, drop)


def _jax_inputs(variant, bundle, dtype):
    from parity.core.sides import jax_inputs

    return jax_inputs(variant.arch, variant, bundle, dtype)


def _torch_inputs(variant, bundle, dtype, device):
    from parity.core.sides import torch_inputs

    return torch_inputs(variant.arch, variant, bundle, dtype, device)


def _jax_loss(net, inputs, cfg: MeanFlowConfig) -> dict:
    from jax_meanflow.objective import meanflow_loss

    x, y, noise, null = inputs
    out = meanflow_loss(net, x, y, noise, cfg, null_y=null, train=False)
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}


def _torch_loss(net, inputs, cfg: MeanFlowConfig, jvp=None) -> dict:
    import torch_meanflow.objective as tobj  # looked up at call time: the controls patch its functions

    x, y, noise, null = inputs
    return tobj.meanflow_loss(net, x, y, noise, cfg, null_y=null, train=False, jvp=jvp).as_dict()


def _variants(arch, model_cfg):
    return arch.variants(model_cfg)  # the Arch's `variants` are MeanFlow's


def _check_variant(variant) -> None:
    cfg = variant.mf_cfg
    needs = [f"{k}={getattr(cfg, k)!r}" for k, on in (("guidance_eq", bool(cfg.guidance_eq)),
             ("class_dropout_prob", cfg.class_dropout_prob > 0)) if on]
    if needs and variant.arch.null_label is None:
        raise ObjectiveMismatch(
            f"variant {variant.name!r} of {variant.arch.name}: its MeanFlowConfig has {' and '.join(needs)}, "
            f"which need the null class, but the Arch's null_label is None; give the Arch "
            f"null_label=lambda model_cfg: <the null class, e.g. model_cfg.num_classes>, or make "
            f"this variant unguided (Arch.variants: MeanFlowConfig(guidance_eq=\"\", class_dropout_prob=0.0))")


def branches(bundle, cfg: MeanFlowConfig) -> dict[str, int]:
    """Branch name -> number of samples of the bundle that reach it (the ones cfg has):
    r = t and r < t; with class dropout, dropped and kept; with a guidance window narrower
    than [0, 1], KEPT samples with t inside and outside it (a dropped sample's v_g is v
    whatever the window says, so only kept ones show it)."""
    t, r, drop = np.asarray(bundle.t), np.asarray(bundle.r), np.asarray(bundle.drop_mask, bool)
    out = {"r = t": int(np.sum(t == r)), "r < t": int(np.sum(r < t))}
    if cfg.class_dropout_prob > 0:
        out["dropped"] = int(drop.sum())
        out["kept"] = int((~drop).sum())
    if cfg.guidance_eq and not (cfg.t_start <= 0.0 and cfg.t_end >= 1.0):
        inside = (t >= cfg.t_start) & (t <= cfg.t_end)
        out["kept, t in window"] = int(np.sum(inside & ~drop))
        out["kept, t outside window"] = int(np.sum(~inside & ~drop))
    return out


def _samplers(seed: int) -> list:
    from parity.core.meanflow_samplers import sampler_checks

    return sampler_checks(seed=seed)


def jvp_point(variant, bundle, ref_terms) -> JvpPoint:
    """Primals (z_t, t, r) and tangents (v_g, 1, 0) (v with cfg.tangent "v") of the JVP, from
    the bundle and the reference's v_g; the labels after class dropout."""
    tb = bundle.t.reshape((-1,) + (1,) * (bundle.x.ndim - 1))
    z = (1.0 - tb) * bundle.x + tb * bundle.e
    tangent = ref_terms["v_g"] if variant.mf_cfg.tangent == "guided" else bundle.e - bundle.x
    null = variant.arch.null_y(variant, bundle.batch_size)
    if null is not None:
        bundle = dataclasses.replace(bundle, y=np.where(bundle.drop_mask, null, bundle.y))
    t, r = np.asarray(bundle.t, np.float64), np.asarray(bundle.r, np.float64)
    return JvpPoint(primals=(z, t, r), tangents=(np.asarray(tangent, np.float64), np.ones_like(t), np.zeros_like(r)),
                    data=(True, False, False), y=bundle.y, bundle=bundle)


def jvp_call(net, primals, fixed, y):
    z, t, r = primals
    return net(z, t, t - r, y, False)


# Objective terms in the order the objective computes them, with what a first failure
# there means once the network is known to agree at identical inputs.
HINTS = (
    ("v_g", "the guided velocity differs: classifier-free guidance or class dropout in the objective"),
    ("u", "u differs although the network agrees at the reference inputs: the objective feeds the "
          "network other inputs (z_t, h = t - r, the dropped labels)"),
    ("du_dt", "du/dt differs while u agrees and the network's own tangents agree under (v_g, 1, 0): "
              "the objective forms another derivative (a zero z-tangent gives the partial derivative "
              "in t; autograd.grad w.r.t. t gives a summed partial); du/dt must be the JVP with "
              "tangents (v_g, 1, 0)"),
    ("u_tgt", "u_tgt differs while v_g and du/dt agree: the target formula v_g - clip(t - r, 0, 1) du/dt"),
    ("loss_per_sample", "the per-sample loss differs while u and u_tgt agree: the loss reduction"),
    ("loss", "the loss differs while the per-sample losses agree: the adaptive weight or the mean"),
    ("grad", "every value agrees but the gradients differ: gradient flows where it must not "
             "(no stop-gradient on the target u_tgt, or on the adaptive weight)"),
)

MEANFLOW = Objective(
    name="meanflow",
    convention=U_FN,
    config_type=MeanFlowConfig,
    quantities=QUANTITIES,
    loss="loss",
    make_bundle=make_bundle,
    jax_inputs=_jax_inputs,
    torch_inputs=_torch_inputs,
    jax_loss=_jax_loss,
    torch_loss=_torch_loss,
    variants=_variants,
    check_variant=_check_variant,
    branches=branches,
    samplers=_samplers,
    controls=OBJECTIVE_CONTROLS,
    no_op_changes=NO_OP_PORTING_CHANGES,
    jvp_point=jvp_point,
    jvp_call=jvp_call,
    jvp_terms=("u", "du_dt"),
    hints=HINTS,
)
