"""Negative controls of the iMF and pMF objectives: realistic porting bugs injected into the
torch side (`torch_meanflow.imf_objective`, `torch_meanflow.pmf_objective`, whose functions
the losses look up when they run), each of which the parity check must fail; and a porting
change that is no bug (a control that must pass).

    tangent_e_minus_x         the JVP's z tangent e - x (MeanFlow's) instead of the guided v_c'
    omega_not_reset           omega' = omega everywhere (not reset to 1 outside [t_min, t_max])
    du_dt_not_stopped         V = u + (t - r) du/dt with du/dt's graph kept (needs torch.func)
    weight_not_stopped        the adaptive weight's denominator not stop-gradiented
    (pMF) clip_at_zero        velocities (z - x) / t: the clip at t_clip_min left out
    (pMF) perceptual_mask_ge  the perceptual terms where t >= perceptual_max_t instead of <
    separate_guidance_calls   (no-op) v_c and v_u by two network calls instead of one of 2B

Importing this module loads no framework.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace

from parity.core.controls import Control


@contextlib.contextmanager
def _patched(module_name: str, name: str, replacement):
    import importlib

    module = importlib.import_module(module_name)
    original = getattr(module, name)
    setattr(module, name, replacement(original))
    try:
        yield
    finally:
        setattr(module, name, original)


_TIMF = "torch_meanflow.imf_objective"
_TPMF = "torch_meanflow.pmf_objective"


def _tangent_e_minus_x(original):
    def u_v_and_du_dt(net, z, t, r, noise, y_inp, tangent, options):
        tb = t.reshape((-1,) + (1,) * (z.dim() - 1))
        return original(net, z, t, r, noise, y_inp, (noise.e - z) / (1 - tb), options)  # = e - x

    return u_v_and_du_dt


def _omega_not_reset(original):
    return lambda omega, t, t_min, t_max: omega


def _du_dt_not_stopped(original):
    def compound_v(u, du_dt, t, r):
        return u + (t - r).reshape((-1,) + (1,) * (u.dim() - 1)) * du_dt

    return compound_v


def _weight_not_stopped(original):
    return lambda loss, cfg: loss / (loss + cfg.norm_eps) ** cfg.norm_p


def _clip_at_zero(original):
    def x_to_velocity(z, x_pred, t, cfg):
        return (z - x_pred) / t.clamp(0.0, 1.0).reshape((-1,) + (1,) * (z.dim() - 1))

    return x_to_velocity


def _perceptual_mask_ge(original):
    return lambda t, cfg: t >= cfg.perceptual_max_t


def _separate_guidance_calls(original):
    def guidance(net, z, t, v_t, y, noise, null_y):
        import torch

        import torch_meanflow.imf_objective as timf

        with torch.no_grad():
            ones = torch.ones_like(noise.omega)
            v_c = timf._v_head(net, z, t, noise.omega, y)
            v_u = timf._v_head(net, z, t, ones, torch.full_like(y, null_y))
            k = (1 - 1 / noise.omega).reshape((-1,) + (1,) * (z.dim() - 1))
            v_g_fm = v_t + k * (v_c - v_u)
            omega_eff = timf.effective_omega(noise.omega, t, noise.t_min, noise.t_max)
            v_c_eff = timf._v_head(net, z, t, omega_eff, y)
            k_eff = (1 - 1 / omega_eff).reshape(k.shape)
            v_g = v_t + k_eff * (v_c_eff - v_u)
            fm = noise.fm_mask.reshape(k.shape)
            return torch.where(fm, v_g_fm, v_g), v_c_eff, v_u, omega_eff

    return guidance


def _controls(objective: str) -> tuple:
    return (
        Control("tangent_e_minus_x", "JVP z tangent e - x instead of the guided conditional velocity v_c'",
                objective=lambda: _patched(_TIMF, "u_v_and_du_dt", _tangent_e_minus_x), for_objective=objective),
        Control("omega_not_reset", "omega not reset to 1 outside the sample's guidance interval",
                objective=lambda: _patched(_TIMF, "effective_omega", _omega_not_reset), for_objective=objective),
        Control("du_dt_not_stopped", "no stop-gradient on du/dt in V = u + (t - r) du/dt",
                objective=lambda: _patched(_TIMF, "compound_v", _du_dt_not_stopped), engine="torch.func",
                for_objective=objective),
        Control("weight_not_stopped", "adaptive weight l / (l + eps)^p without stop-gradient on the denominator",
                objective=lambda: _patched(_TIMF, "adaptive_weight", _weight_not_stopped), for_objective=objective),
    )


def _no_op(objective: str) -> dict:
    return {"separate_guidance_calls": Control(
        "separate_guidance_calls", "v_c and v_u by two network calls instead of one batched call of 2B (no bug)",
        objective=lambda: _patched(_TIMF, "guidance", _separate_guidance_calls), for_objective=objective)}


IMF_CONTROLS = _controls("imf")
IMF_NO_OP = _no_op("imf")

PMF_CONTROLS = _controls("pmf") + (
    Control("clip_at_zero", "velocities (z - x_pred) / t: clip(t, 0, 1) instead of clip(t, t_clip_min, 1)",
            objective=lambda: _patched(_TPMF, "x_to_velocity", _clip_at_zero), for_objective="pmf"),
    Control("perceptual_mask_ge", "perceptual terms where t >= perceptual_max_t instead of t < perceptual_max_t",
            objective=lambda: _patched(_TPMF, "perceptual_mask", _perceptual_mask_ge), for_objective="pmf"),
)
PMF_NO_OP = {k: replace(c, for_objective="pmf") for k, c in _no_op("pmf").items()}
