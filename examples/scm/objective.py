"""The sCM objective as a `parity.Objective`: everything the harness, the checks and the
debugger need, written outside the parity package as a user writes one.

    SCM      the objective: JAX reference (`jax_objective.scm_loss`) against the torch port
             (`torch_objective.scm_loss`), called through F(x, t, y, train) -> F (`F_CALL`)
    BROKEN   the same objective whose torch side flips the sign of the tangent's sin term
             (`torch_objective.broken_data_tangent`): every check fails, the debugger blames
             the objective (the network agrees at identical inputs) and names dx_t/dt
    CONTROLS its negative controls, each a bug injected into the torch side that must fail
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import numpy as np

from examples.scm.config import SCMConfig
from parity import Control, Convention, JvpPoint, Objective, Quantity
from parity.core.compare import CheckResult
from parity.core.objective import same_shape_as_first
from parity.core.sampler_oracle import ks_critical, ks_statistic

# How sCM calls the network: the TrigFlow parameterisation F_theta(x_t / sigma_d, t), t [B] in [0, pi/2].
F_CALL = Convention("F", "F_fn(x, t, y, train) -> F (F of x's shape, t [B] in [0, pi/2])",
                    check=same_shape_as_first)


@dataclass(frozen=True)
class SCMBundle:
    """float64, JAX layout: x [B, ...] the data x0, y the conditioning, z [B, ...] the noise
    (N(0, sigma_d^2 I)), t [B] in (0, pi/2)."""

    arch: str
    x: np.ndarray
    y: object
    z: np.ndarray
    t: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]


def draw_t(rng: np.random.Generator, batch: int, cfg: SCMConfig) -> np.ndarray:
    """t = arctan(exp(tau) / sigma_d), tau ~ N(P_mean, P_std^2): the paper's proposal, in NumPy."""
    return np.arctan(np.exp(cfg.P_mean + cfg.P_std * rng.standard_normal(batch)) / cfg.sigma_d)


def make_bundle(variant, batch: int, seed: int, **options) -> SCMBundle:
    """The Arch's data (`Arch.make_data`), then z and t from the same generator; when every t
    fell on one side of pi/4, the last sample's t is reflected to pi/2 - t, so that both
    regimes (x_t nearer the data, nearer the noise) are compared (`branches`)."""
    cfg = variant.mf_cfg
    rng = np.random.default_rng(seed)
    x, y = variant.arch.data(variant.model_cfg, batch, rng, **options)
    z = cfg.sigma_d * rng.standard_normal(x.shape)
    t = draw_t(rng, batch, cfg)
    if batch > 1 and (np.all(t < math.pi / 4) or np.all(t >= math.pi / 4)):
        t[-1] = math.pi / 2 - t[-1]
    return SCMBundle(variant.arch.name, x, y, z, t)


def _jax_inputs(variant, bundle: SCMBundle, dtype: str):
    import jax.numpy as jnp

    from examples.scm.jax_objective import SCMNoise
    from parity.core.sides import jax_dtype

    jdt = jax_dtype(dtype)
    noise = SCMNoise(z=jnp.asarray(bundle.z, jdt), t=jnp.asarray(bundle.t, jdt))
    return jnp.asarray(bundle.x, jdt), variant.arch.jax_y(bundle.y, jdt), noise


def _torch_inputs(variant, bundle: SCMBundle, dtype: str, device: str):
    from examples.scm.torch_objective import SCMNoise
    from parity.core.sides import to_torch_tensor, torch_dtype

    arch = variant.arch
    noise = SCMNoise(z=to_torch_tensor(arch, bundle.z, dtype, device, data=True),
                     t=to_torch_tensor(arch, bundle.t, dtype, device))
    x = to_torch_tensor(arch, bundle.x, dtype, device, data=True)
    return x, arch.torch_y(bundle.y, torch_dtype(dtype), device), noise


def _jax_loss(net, inputs, cfg: SCMConfig) -> dict:
    from examples.scm.jax_objective import scm_loss

    x, y, noise = inputs
    return scm_loss(net, x, y, noise, cfg)


def _torch_loss(net, inputs, cfg: SCMConfig, jvp=None) -> dict:
    import examples.scm.torch_objective as tobj  # looked up at call time: the controls patch it

    x, y, noise = inputs
    return tobj.scm_loss(net, x, y, noise, cfg)  # dF/dt by torch.func.jvp whatever `jvp` says


def _broken_torch_loss(net, inputs, cfg: SCMConfig, jvp=None) -> dict:
    import examples.scm.torch_objective as tobj

    x, y, noise = inputs
    return tobj.scm_loss(net, x, y, noise, cfg, tangent_fn=tobj.broken_data_tangent)


def variants(arch, model_cfg):
    """Consistency training after the warmup, and mid-warmup with the model's own velocity as tangent."""
    return [("scm", model_cfg, SCMConfig()),
            ("scm warmup 0.5, own velocity", model_cfg, SCMConfig(warmup=0.5, tangent="model"))]


def branches(bundle: SCMBundle, cfg: SCMConfig) -> dict[str, int]:
    """Samples with t < pi/4 (x_t nearer the data) and t >= pi/4 (nearer the noise)."""
    t = np.asarray(bundle.t)
    return {"t < pi/4": int(np.sum(t < math.pi / 4)), "t >= pi/4": int(np.sum(t >= math.pi / 4))}


# ----------------------------------------------------------------------------------
# The samplers: each backend's sample_noise against the other and against NumPy
# ----------------------------------------------------------------------------------


def _draw_jax(cfg: SCMConfig, n: int, seed: int) -> dict:
    import jax
    import jax.numpy as jnp

    from examples.scm.jax_objective import sample_noise

    noise = sample_noise(jax.random.PRNGKey(seed), (n, 2), cfg, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return {"z": np.asarray(noise.z, np.float64), "t": np.asarray(noise.t, np.float64)}


def _draw_torch(cfg: SCMConfig, n: int, seed: int) -> dict:
    import torch

    from examples.scm.torch_objective import sample_noise

    noise = sample_noise((n, 2), cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return {"z": noise.z.numpy(), "t": noise.t.numpy()}


def sampler_checks(seed: int = 0, n: int = 20000, draw_jax=_draw_jax, draw_torch=_draw_torch) -> list[CheckResult]:
    """Per backend: the KS statistic of t against a NumPy draw (alpha = 1e-3 critical value),
    z's standard deviation against sigma_d (4.5 standard errors), shapes and 0 < t < pi/2;
    then t backend against backend. The draw functions are parameters so that a test can
    inject a broken sampler."""
    cfg = SCMConfig()
    ref = draw_t(np.random.default_rng(seed + 100), n, cfg)
    crit = ks_critical(n, n)

    def row(quantity, value, tol, passed, where):
        return CheckResult(arch="sampler", variant="scm default", dtype="float64", device="cpu", quantity=quantity,
                           max_abs=float(value), max_rel=float(value), tol=float(tol), passed=bool(passed), where=where)

    out, draws = [], {}
    for side, draw in (("jax", draw_jax), ("torch", draw_torch)):
        got = draws[side] = draw(cfg, n, seed)
        d = ks_statistic(got["t"], ref)
        out.append(row(f"{side} t KS", d, crit, d <= crit, f"t {d:.4f}"))
        dev, se = abs(float(np.std(got["z"])) - cfg.sigma_d), 4.5 * cfg.sigma_d / math.sqrt(2 * got["z"].size)
        out.append(row(f"{side} z std", dev, se, dev <= se, f"std {np.std(got['z']):.4f} vs sigma_d {cfg.sigma_d}"))
        ok = got["z"].shape == (n, 2) and got["t"].shape == (n,) and bool(np.all((got["t"] > 0) & (got["t"] < math.pi / 2)))
        out.append(row(f"{side} shapes", 0 if ok else 1, 0, ok, f"z {got['z'].shape}, t {got['t'].shape}; 0<t<pi/2"))
    d = ks_statistic(draws["jax"]["t"], draws["torch"]["t"])
    out.append(row("t KS cross", d, crit, d <= crit, f"t {d:.4f}"))
    return out


# ----------------------------------------------------------------------------------
# The debugger's view: the network call inside the JVP
# ----------------------------------------------------------------------------------


def jvp_point(variant, bundle: SCMBundle, ref_terms) -> JvpPoint:
    """Primals (x_t / sigma_d, t), tangents (dx_t/dt / sigma_d, 1), dx_t/dt the reference's."""
    cfg = variant.mf_cfg
    tb = bundle.t.reshape((-1,) + (1,) * (bundle.x.ndim - 1))
    x_t = np.cos(tb) * bundle.x + np.sin(tb) * bundle.z
    return JvpPoint(primals=(x_t / cfg.sigma_d, bundle.t), tangents=(ref_terms["dxt_dt"] / cfg.sigma_d,
                    np.ones_like(bundle.t)), data=(True, False), y=bundle.y, bundle=bundle)


def jvp_call(net, primals, fixed, y):
    x, t = primals
    return net(x, t, y, False)


HINTS = (
    ("dxt_dt", "the tangent dx_t/dt differs: it must be cos(t) z - sin(t) x0 (consistency training) or "
               "sigma_d F (the model's own velocity)"),
    ("F", "F differs although the network agrees at the reference inputs: the objective feeds it another "
          "x_t / sigma_d or t"),
    ("dF_dt", "dF/dt differs while F and dx_t/dt agree: the JVP's tangents must be (dx_t/dt / sigma_d, 1)"),
    ("g", "g differs while F and dF/dt agree: the target -cos^2 t (sigma_d F - dx_t/dt) - r cos t sin t "
          "(x_t + sigma_d dF/dt) or its normalisation g / (||g|| + c)"),
    ("loss_per_sample", "the per-sample loss differs while F and g agree: the reduction"),
    ("loss", "the loss differs while the per-sample losses agree: the mean over samples and elements"),
    ("grad", "every value agrees but the gradients differ: gradient flows where it must not "
             "(no stop-gradient on F- or on g)"),
)


# ----------------------------------------------------------------------------------
# Negative controls: bugs injected into the torch side (each must fail)
# ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _patched(name: str, replacement):
    import examples.scm.torch_objective as tobj

    original = getattr(tobj, name)
    setattr(tobj, name, replacement(original))
    try:
        yield
    finally:
        setattr(tobj, name, original)


def _flipped_sin(original):
    import examples.scm.torch_objective as tobj

    return tobj.broken_data_tangent


def _no_normalisation(original):
    def target(F, dF_dt, x_t, dxt_dt, cos, sin, cfg):
        return original(F, dF_dt, x_t, dxt_dt, cos, sin, replace(cfg, tangent_c=0.0))

    return target


def _no_stop_gradient(original):
    """F- keeps its graph: F - F- contributes no gradient and g's graph does."""

    def target(F, dF_dt, x_t, dxt_dt, cos, sin, cfg):
        g = -cos**2 * (cfg.sigma_d * F - dxt_dt) - cfg.warmup * cos * sin * (x_t + cfg.sigma_d * dF_dt)
        dims = tuple(range(1, g.dim()))
        return g / (g.pow(2).sum(dim=dims, keepdim=True).sqrt() + cfg.tangent_c), F

    return target


CONTROLS = (
    Control("tangent_sin_sign", "dx_t/dt = cos(t) z + sin(t) x0 (the sin term's sign flipped)",
            objective=lambda: _patched("data_tangent", _flipped_sin)),
    Control("no_tangent_normalisation", "g used without the normalisation g / (||g|| + c)",
            objective=lambda: _patched("target", _no_normalisation)),
    Control("no_stop_gradient", "no stop-gradient on F- and g", objective=lambda: _patched("target", _no_stop_gradient)),
)

QUANTITIES = (
    Quantity("F", tol="u", data=True, nonzero=True),
    Quantity("dF_dt", tol="du_dt", data=True, nonzero=True),
    Quantity("dxt_dt", tol="v_g", data=True, nonzero=True),
    Quantity("g", tol="u_tgt", data=True, nonzero=True),
    Quantity("loss_per_sample"),
    Quantity("loss"),
)

SCM = Objective(
    name="scm",
    convention=F_CALL,
    config_type=SCMConfig,
    quantities=QUANTITIES,
    loss="loss",
    make_bundle=make_bundle,
    jax_inputs=_jax_inputs,
    torch_inputs=_torch_inputs,
    jax_loss=_jax_loss,
    torch_loss=_torch_loss,
    variants=variants,
    branches=branches,
    samplers=lambda seed: sampler_checks(seed),
    controls=CONTROLS,
    jvp_point=jvp_point,
    jvp_call=jvp_call,
    jvp_terms=("F", "dF_dt"),
    hints=HINTS,
)

BROKEN = replace(SCM, name="scm_broken", torch_loss=_broken_torch_loss, controls=())
