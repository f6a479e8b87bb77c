"""The improved MeanFlow (iMF) objective as a plug-in of the harness: `IMF` (`--objective imf`).

Its implementations are `jax_meanflow.imf_objective.imf_loss` (the reference, `jax.jvp`) and
`torch_meanflow.imf_objective.imf_loss` (the port), called through the iMF network call
`net(z, t, h, omega, t_min, t_max, y) -> (u, v)` (`IMF_CALL`, which an Arch provides through
an adapter: parity.archs.imf_dit). Its bundle (`GuidedBundle`) is drawn once in float64
NumPy by `meanflow_common.imf_draws.draw_imf` around the Arch's data, then moved so that one
batch reaches every branch (`cover_branches`). Compared: every named output of the loss (u,
du/dt, v, the guidance velocities v_c, v_u, v_g, V, omega', the raw and weighted losses,
the loss) and every parameter's gradient of the loss.

The samplers check is `parity.core.imf_samplers`, the negative controls
`parity.core.imf_controls`. Importing this module loads no framework.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from meanflow_common import imf_draws
from meanflow_common.objective_configs import IMF_PRESETS, IMFConfig
from parity.core.imf_controls import IMF_CONTROLS, IMF_NO_OP
from parity.core.objective import Convention, JvpPoint, Objective, ObjectiveMismatch, Quantity, same_shape_as_first

IMF_CALL = Convention("imf", "net(z, t, h, omega, t_min, t_max, y) -> (u, v) (u, v of z's shape; t, h, omega, "
                             "t_min, t_max [B]; y int [B], the null class num_classes)", check=same_shape_as_first)

NOISE_FIELDS = ("e", "t", "r", "omega", "t_min", "t_max", "fm_mask", "drop_mask")
FLOAT_FIELDS = ("t", "r", "omega", "t_min", "t_max")


@dataclass(frozen=True)
class GuidedBundle:
    """One iMF / pMF loss evaluation's inputs, float64 NumPy in the JAX layout: x, e [B, ...]
    (pMF: e already times noise_scale); y the conditioning (int labels [B]); t, r, omega,
    t_min, t_max [B]; fm_mask, drop_mask bool [B] (prefixes); arch: a label."""

    arch: str
    x: np.ndarray
    y: object
    e: np.ndarray
    t: np.ndarray
    r: np.ndarray
    omega: np.ndarray
    t_min: np.ndarray
    t_max: np.ndarray
    fm_mask: np.ndarray
    drop_mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]


def _move(t, r, fm, i, value) -> None:
    """Sample i to time `value`: r = t stays r = t, r < t stays below (at most value / 2)."""
    tied = r[i] == t[i] or fm[i]
    t[i] = value
    r[i] = value if tied else min(r[i], 0.5 * value)


def cover_branches(d: imf_draws.IMFDraws, cfg, low_t: float | None = None, high_t: float | None = None):
    """The draws with every branch reached where the batch allows (`branches` checks it):
    - class dropout: 1 <= num_drop <= max(num_fm, 1) (dropped samples are a prefix, like the
      fm ones, so the guided samples stay kept);
    - low_t (pMF's t_clip_min): when no t is below it, the first sample moves to low_t / 2;
    - high_t (pMF's perceptual_max_t < 1): when no t reaches it, the second fm sample (else
      the last one) moves above it;
    - with guidance (cfg_max > 0), KEPT guided samples with t inside and outside their own
      interval [t_min, t_max]: the first such sample moves inside, the last one outside.
    Moves keep r <= t, r = t on the fm prefix and every value the loss validates."""
    t, r, fm = d.t.copy(), d.r.copy(), d.fm_mask
    b = t.shape[0]
    drop = d.drop_mask
    if cfg.class_dropout_prob > 0 and b > 1:
        n = min(max(d.num_drop, 1), max(int(fm.sum()), 1), b - 1)
        drop = np.arange(b) < n
    used = set()
    if low_t is not None and not np.any(t < low_t):
        _move(t, r, fm, 0, 0.5 * low_t)
        used.add(0)
    if high_t is not None and high_t < 1.0 and not np.any(t >= high_t) and b > 1:
        i = 1 if fm[1] else b - 1
        _move(t, r, fm, i, 0.5 * (high_t + 1.0))
        used.add(i)
    guided = [i for i in np.flatnonzero(~fm & ~drop) if i not in used]
    if cfg.cfg_max > 0 and len(guided) >= 2:
        lo, hi = d.t_min, d.t_max
        inside = (t >= lo) & (t <= hi)
        if not inside[guided].any():
            i = guided[0]
            _move(t, r, fm, i, 0.5 * (lo[i] + hi[i]))
        if inside[guided].all():
            i = guided[-1]
            _move(t, r, fm, i, 0.5 * (hi[i] + 1.0) if hi[i] < 1.0 else 0.5 * lo[i])
    return replace(d, t=t, r=r, drop_mask=drop, num_drop=int(drop.sum()))


def guided_bundle(variant, batch: int, seed: int, draw, **cover) -> GuidedBundle:
    """The Arch's data (`Arch.make_data`), then from the same generator the objective's draws
    (`draw(rng, x_shape, cfg)`), moved by `cover_branches`."""
    rng = np.random.default_rng(seed)
    x, y = variant.arch.data(variant.model_cfg, batch, rng)
    d = cover_branches(draw(rng, x.shape, variant.mf_cfg), variant.mf_cfg, **cover)
    return GuidedBundle(variant.arch.name, x, y, **{k: getattr(d, k) for k in NOISE_FIELDS})


def make_bundle(variant, batch: int, seed: int, **_options) -> GuidedBundle:
    """iMF's bundle: `guided_bundle` with `imf_draws.draw_imf`."""
    return guided_bundle(variant, batch, seed, imf_draws.draw_imf)


def null_label(variant) -> int:
    return int(variant.arch.null_label(variant.model_cfg))


def jax_noise(noise_cls, variant, bundle, dtype):
    import jax.numpy as jnp

    from parity.core.sides import jax_dtype

    jdt = jax_dtype(dtype)
    return noise_cls(**{k: jnp.asarray(getattr(bundle, k), jdt if k not in ("fm_mask", "drop_mask") else bool)
                        for k in NOISE_FIELDS})


def torch_noise(noise_cls, variant, bundle, dtype, device):
    import torch

    from parity.convert.arrays import as_torch
    from parity.core.sides import to_torch_tensor

    arch = variant.arch
    out = {k: to_torch_tensor(arch, getattr(bundle, k), dtype, device, data=k == "e") for k in ("e",) + FLOAT_FIELDS}
    out.update({k: as_torch(getattr(bundle, k), torch.bool, device) for k in ("fm_mask", "drop_mask")})
    return noise_cls(**out)


def jax_inputs(variant, bundle, dtype, noise_cls=None):
    """(x, y, noise, null_y) of the JAX loss: null_y an int32 scalar array (an input of the
    compiled loss, not a Python constant)."""
    import jax.numpy as jnp

    from parity.core.sides import jax_dtype

    if noise_cls is None:
        from jax_meanflow.imf_objective import IMFNoise as noise_cls
    jdt = jax_dtype(dtype)
    return (jnp.asarray(bundle.x, jdt), variant.arch.jax_y(bundle.y, jdt), jax_noise(noise_cls, variant, bundle, dtype),
            jnp.asarray(null_label(variant), jnp.int32))


def torch_inputs(variant, bundle, dtype, device, noise_cls=None):
    """(x, y, noise, null_y) of the torch loss, x and e in torch's layout, null_y an int."""
    from parity.core.sides import to_torch_tensor, torch_dtype

    if noise_cls is None:
        from torch_meanflow.imf_objective import IMFNoise as noise_cls
    arch = variant.arch
    x = to_torch_tensor(arch, bundle.x, dtype, device, data=True)
    return (x, arch.torch_y(bundle.y, torch_dtype(dtype), device), torch_noise(noise_cls, variant, bundle, dtype, device),
            null_label(variant))


def _jax_loss(net, inputs, cfg: IMFConfig) -> dict:
    from jax_meanflow.imf_objective import imf_loss

    x, y, noise, null = inputs
    out = imf_loss(net, x, y, noise, cfg, null)
    return {f.name: getattr(out, f.name) for f in fields(out)}


def _torch_loss(net, inputs, cfg: IMFConfig, jvp=None) -> dict:
    import torch_meanflow.imf_objective as timf  # looked up at call time: the controls patch its functions

    x, y, noise, null = inputs
    return timf.imf_loss(net, x, y, noise, cfg, null, jvp=jvp).as_dict()


TINY = IMF_PRESETS["tiny"]


def variants(arch, model_cfg):
    """Guided (the tiny preset: guidance scale up to 8, intervals, class dropout, a third of
    the batch flow matching) and unguided (omega = 1, no class dropout)."""
    return [("imf guided", model_cfg, TINY),
            ("imf unguided", model_cfg, replace(TINY, cfg_max=0.0, class_dropout_prob=0.0))]


def check_variant(variant) -> None:
    if variant.arch.null_label is None:
        raise ObjectiveMismatch(f"variant {variant.name!r} of {variant.arch.name}: objective {variant.objective.name} "
                                f"needs the null class (guidance and class dropout); give the Arch "
                                f"null_label=lambda model_cfg: model_cfg.num_classes")


def branches(bundle, cfg) -> dict[str, int]:
    """Branch -> samples reaching it: flow matching (the fm prefix, r = t, interval [0, 1])
    and mean flow; with class dropout, dropped and kept; with guidance (cfg_max > 0), KEPT
    mean-flow samples with t inside and outside their interval (omega kept, omega -> 1)."""
    t, fm, drop = np.asarray(bundle.t), np.asarray(bundle.fm_mask, bool), np.asarray(bundle.drop_mask, bool)
    out = {"flow matching (fm prefix)": int(fm.sum()), "mean flow (r <= t)": int((~fm).sum())}
    if cfg.class_dropout_prob > 0:
        out["dropped"] = int(drop.sum())
        out["kept"] = int((~drop).sum())
    if cfg.cfg_max > 0:
        inside = (t >= bundle.t_min) & (t <= bundle.t_max)
        g = ~fm & ~drop
        out["kept mean flow, t in [t_min, t_max]"] = int(np.sum(g & inside))
        out["kept mean flow, t outside (omega -> 1)"] = int(np.sum(g & ~inside))
    return out


def _samplers(seed: int) -> list:
    from parity.core.imf_samplers import imf_sampler_checks

    return imf_sampler_checks(seed=seed)


def jvp_point(variant, bundle, ref_terms) -> JvpPoint:
    """Primals (z_t, t, r) and tangents (v_c', 1, 0), v_c' the reference's; fixed: the drawn
    omega and interval (what the JVP'd call sees); the labels after class dropout."""
    tb = bundle.t.reshape((-1,) + (1,) * (bundle.x.ndim - 1))
    z = (1.0 - tb) * bundle.x + tb * bundle.e
    y = np.where(bundle.drop_mask, null_label(variant), bundle.y)
    t, r = np.asarray(bundle.t, np.float64), np.asarray(bundle.r, np.float64)
    return JvpPoint(primals=(z, t, r), tangents=(np.asarray(ref_terms["v_c"], np.float64), np.ones_like(t),
                    np.zeros_like(r)), data=(True, False, False), y=y, bundle=bundle,
                    fixed={k: np.asarray(getattr(bundle, k), np.float64) for k in ("omega", "t_min", "t_max")})


def jvp_call(net, primals, fixed, y):
    z, t, r = primals
    return net(z, t, t - r, fixed["omega"], fixed["t_min"], fixed["t_max"], y)


HINTS = (
    ("omega_eff", "omega' differs: omega must be kept inside the sample's own [t_min, t_max] and reset to 1 outside"),
    ("v_u", "the unconditional v differs although the network agrees: the null label, omega = 1 or the interval "
            "[0, 1] of the guidance call"),
    ("v_c", "the conditional v differs while v_u agrees: the guidance call's omega (omega', not the drawn one)"),
    ("v_g", "v_g differs while v_c and v_u agree: v_t + (1 - 1/omega') (v_c - v_u), the fm samples' raw omega, "
            "or class dropout (v_g -> v_t on the dropped prefix)"),
    ("u", "u differs although the network agrees at the reference inputs: the objective feeds it other inputs "
          "(z_t, h = t - r, the drawn omega / interval, the dropped labels)"),
    ("v", "v differs while u agrees: the v head's inputs in the JVP'd call"),
    ("du_dt", "du/dt differs while u agrees: the JVP's tangents must be (v_c', 1, 0), v_c' the guided conditional "
              "velocity (not e - x)"),
    ("V", "V differs while u and du/dt agree: V = u + (t - r) sg(du/dt)"),
    ("loss_u_raw", "the raw u loss differs while V and v_g agree: sum (V - v_g)^2 per sample"),
    ("loss_v_raw", "the raw v loss differs while v and v_g agree: sum (v - v_g)^2 per sample"),
    ("loss_u", "the weighted u loss differs while its raw loss agrees: l / (l + norm_eps)^norm_p"),
    ("loss_v", "the weighted v loss differs while its raw loss agrees: l / (l + norm_eps)^norm_p"),
    ("loss_per_sample", "the per-sample loss differs while its terms agree: their sum"),
    ("loss", "the loss differs while the per-sample losses agree: the batch mean"),
    ("grad", "every value agrees but the gradients differ: gradient flows where it must not (no stop-gradient on "
             "du/dt in V, on v_g, or on the adaptive weight's denominator)"),
)

QUANTITIES = (
    Quantity("u", data=True, nonzero=True),
    Quantity("du_dt", data=True, nonzero=True),
    Quantity("v", tol="u", data=True, nonzero=True),
    Quantity("v_c", tol="v_g", data=True, nonzero=True),
    Quantity("v_u", tol="v_g", data=True, nonzero=True),
    Quantity("v_g", data=True, nonzero=True),
    Quantity("V", tol="du_dt", data=True, nonzero=True),
    Quantity("omega_eff", tol="loss"),
    Quantity("loss_u_raw", tol="loss_per_sample", nonzero=True),
    Quantity("loss_v_raw", tol="loss_per_sample", nonzero=True),
    Quantity("loss_u", tol="loss_per_sample"),
    Quantity("loss_v", tol="loss_per_sample"),
    Quantity("loss_per_sample"),
    Quantity("loss"),
)

IMF = Objective(
    name="imf",
    convention=IMF_CALL,
    config_type=IMFConfig,
    quantities=QUANTITIES,
    loss="loss",
    make_bundle=make_bundle,
    jax_inputs=jax_inputs,
    torch_inputs=torch_inputs,
    jax_loss=_jax_loss,
    torch_loss=_torch_loss,
    variants=variants,
    check_variant=check_variant,
    branches=branches,
    samplers=_samplers,
    controls=IMF_CONTROLS,
    no_op_changes=IMF_NO_OP,
    jvp_point=jvp_point,
    jvp_call=jvp_call,
    jvp_terms=("u", "du_dt"),
    hints=HINTS,
)
