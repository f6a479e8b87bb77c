"""Cross-backend training parity: the JAX and PyTorch trainers from one state, step by step.

    python -m parity.train_parity                     # tiny DiT, batch 4, 50 steps, float32 + float64
    python -m parity.train_parity --steps 100 --dtype float64 --png parity_train.png
    python -m parity.train_parity --preset tiny_imf   # improved MeanFlow (tiny_pmf: pixel MeanFlow)

Both trainers (`jax_meanflow.train.train`, `torch_meanflow.train.train`) run the same
recipe from the same initial parameters (randomised in torch, converted to Flax through
the table of the registered Arch whose presets are of the run's network config: "dit",
"imf-dit", "pmf-dit"), on the same batches (the built-in digits data, `batch_at(seed,
step)`), with the same randomness: per step, the method's randomness (MeanFlow: noise e,
times (t, r), the class-dropout mask; iMF / pMF: also omega, the interval and the r = t
mask, `meanflow_common.imf_draws`) is drawn once in NumPy float64 from (seed, step) and
handed to both through `noise_fn`.
After every update the parameters and the EMA of both sides are compared (torch state
dict vs the Flax tree converted to torch names), along with loss, v_loss and gradient norm.

Divergence per step: relative L2 distance ||w_jax - w_torch|| / ||w_torch|| over all
parameters together (and the same for the EMA), relative differences of the scalars.
In float64 the two trajectories agree to ~1e-12; in float32 the rounding differences of
the two frameworks grow through the optimiser (reported, not bounded).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass, field, replace

import numpy as np

from meanflow_common.cli_args import positive_int
from meanflow_common.config import MeanFlowConfig, get_preset
from meanflow_common.imf_draws import draw_imf, draw_pmf
from meanflow_common.objective_configs import IMFConfig, PMFConfig
from meanflow_common.tasks import get_task
from meanflow_common.tasks.digits import DIGITS
from meanflow_common.train_config import TRAIN_PRESETS, TrainConfig, apply_assignments, model_config, objective_config
from parity.convert import jax_to_torch, torch_to_jax
from parity.core.inputs import drop_mask_numpy, sample_tr_numpy

__all__ = ["Trajectory", "numpy_noise", "shared_noise", "arch_of", "parity_config", "run_pair", "format_table",
           "plot", "main"]


@dataclass
class Trajectory:
    """Per-step divergences of one JAX/PyTorch pair (index i = after update i + 1)."""

    dtype: str
    loss: list = field(default_factory=list)  # (jax, torch) per step
    rel_loss: list = field(default_factory=list)
    rel_v_loss: list = field(default_factory=list)
    rel_grad_norm: list = field(default_factory=list)
    rel_params: list = field(default_factory=list)
    rel_ema: list = field(default_factory=list)
    moved: float = 0.0  # ||w_final - w_init|| / ||w_init|| (torch): the run is not a no-op

    def worst(self) -> dict:
        return {k: float(np.max(getattr(self, k))) for k in
                ("rel_loss", "rel_v_loss", "rel_grad_norm", "rel_params", "rel_ema")}


def _meanflow_numpy(rng, x_shape, mf: MeanFlowConfig) -> dict:
    e = rng.standard_normal(tuple(x_shape))
    t, r = sample_tr_numpy(rng, x_shape[0], mf)
    return {"e": e, "t": t, "r": r, "drop_mask": drop_mask_numpy(rng, x_shape[0], mf.class_dropout_prob)}


def _guided_numpy(draw):
    def numpy_draw(rng, x_shape, settings) -> dict:
        fields = draw(rng, tuple(x_shape), settings).as_dict()
        del fields["num_drop"]  # the count is drop_mask's: the backends' noise carries the mask
        return fields

    return numpy_draw


# The NumPy draw of each kind of objective settings (the method's `TrainConfig` section); the
# fields are those of the backends' noise classes (`MethodHooks.noise`).
NUMPY_DRAWS = {MeanFlowConfig: _meanflow_numpy, IMFConfig: _guided_numpy(draw_imf), PMFConfig: _guided_numpy(draw_pmf)}


def numpy_noise(cfg: TrainConfig, step: int, x_shape) -> dict:
    """The method's randomness for data [B, *data shape] (the data interface's layout:
    digits NHWC), float64 / bool NumPy from (seed, step): MeanFlow e, t, r, drop_mask; iMF /
    pMF also omega, t_min, t_max, fm_mask."""
    rng = np.random.default_rng([cfg.seed, step, 7])
    settings = objective_config(cfg)
    if type(settings) not in NUMPY_DRAWS:
        raise ValueError(f"no NumPy draw for objective settings {type(settings).__name__} (method {cfg.method!r}); "
                         "add one to parity.train_parity.run.NUMPY_DRAWS")
    return NUMPY_DRAWS[type(settings)](rng, x_shape, settings)


def shared_noise(cfg: TrainConfig):
    """(jax_noise, torch_noise): `noise_fn(step, batch)` of each trainer giving both the
    same `numpy_noise` of the global batch (e in the data interface's layout, moved to each
    backend's own: the DiT's NCHW on the torch side), so that the two trainers, or a run
    carried from one to the other, consume one stream of randomness. Any task."""
    import jax.numpy as jnp
    import torch

    from jax_meanflow.methods import method_hooks as jax_method
    from torch_meanflow.methods import method_hooks as torch_method
    from torch_meanflow.train import task_hooks

    task = get_task(cfg.task)
    data_shape = tuple(task.data_shape(model_config(cfg)))
    to_torch_layout = task_hooks(cfg).to_layout
    jax_cls, torch_cls = jax_method(cfg).noise, torch_method(cfg).noise

    def jax_noise(step, batch):
        x = batch[task.data_key]
        n = numpy_noise(cfg, step, (x.shape[0], *data_shape))
        return jax_cls(**{k: jnp.asarray(v) if v.dtype == bool else jnp.asarray(v, x.dtype) for k, v in n.items()})

    def torch_noise(step, batch):
        x = batch[task.data_key]
        n = numpy_noise(cfg, step, (x.shape[0], *data_shape))
        n["e"] = to_torch_layout(n["e"])

        def as_t(a):
            a = torch.as_tensor(np.ascontiguousarray(a))
            return a.to(x.device) if a.dtype == torch.bool else a.to(x.device, x.dtype)

        return torch_cls(**{k: as_t(v) for k, v in n.items()})

    return jax_noise, torch_noise


def parity_config(dtype: str, steps: int = 50, batch_size: int = 4, preset: str = "tiny", sets=()) -> TrainConfig:
    """The recipe of the comparison: `preset` with per-step metrics and no intermediate checkpoints."""
    return apply_assignments(TRAIN_PRESETS[preset], [f"dtype={dtype}", f"steps={steps}", f"batch_size={batch_size}",
                                                     "log_every=1", "ckpt_every=0", *sets])


def arch_of(model_cfg):
    """The registered parity Arch whose presets are of `model_cfg`'s exact type (its
    conversion table maps the two trainers' weights); chosen by type, never by name."""
    from parity.archs.registry import registered

    fits = [a for a in registered().values() if any(type(p) is type(model_cfg) for p in a.presets.values())]
    if not fits:
        raise ValueError(f"no registered parity Arch has presets of {type(model_cfg).__name__}")
    return fits[0]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def _flat(sd: dict) -> np.ndarray:
    return np.concatenate([np.asarray(sd[k], np.float64).ravel() for k in sorted(sd)])


def run_pair(cfg: TrainConfig, out_dir: str, init_seed: int = 1) -> tuple[Trajectory, dict]:
    """Train both backends as `cfg` (task digits) into out_dir/{jax,torch}; returns the
    Trajectory and {"jax": RunResult, "torch": RunResult}."""
    import jax

    from jax_meanflow import train as jt
    from meanflow_common.data import batch_at
    from meanflow_common.tasks import get_dataset
    from torch_meanflow import train as tt
    from torch_meanflow.params import randomize_params

    if get_task(cfg.task) is not DIGITS:
        raise ValueError("the training parity runs the DiT on digits (task='digits')")
    if cfg.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    mc = model_config(cfg)
    table = arch_of(mc).table
    dataset = get_dataset("digits", cfg.seed)
    example = batch_at(dataset, cfg.seed, 0, cfg.batch_size)
    model = randomize_params(tt.make_model(cfg, example), init_seed)
    init_sd = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
    _, template = jt.make_model(cfg, example)
    init_jax = torch_to_jax(init_sd, table, mc, template=template)

    jax_noise, torch_noise = shared_noise(cfg)

    record = {"jax": [], "torch": []}

    def on_jax(step, state, metrics):
        to_sd = lambda p: jax_to_torch(jax.tree.map(np.asarray, p), table, mc)  # noqa: E731
        record["jax"].append(({k: float(v) for k, v in metrics.items()}, to_sd(state.params), to_sd(state.ema_params)))

    def on_torch(step, state, metrics):
        sd = lambda m: {k: v.detach().cpu().numpy().copy() for k, v in m.state_dict().items()}  # noqa: E731
        record["torch"].append(({k: float(v) for k, v in metrics.items()}, sd(state.model), sd(state.ema_model)))

    results = {
        "jax": jt.train(replace(cfg, out_dir=os.path.join(out_dir, "jax")), overwrite=True, progress=False,
                        dataset=dataset, noise_fn=jax_noise, init_params=init_jax, on_step=on_jax),
        "torch": tt.train(replace(cfg, out_dir=os.path.join(out_dir, "torch")), overwrite=True, progress=False,
                          dataset=dataset, noise_fn=torch_noise, init_params=init_sd, on_step=on_torch),
    }
    traj = Trajectory(dtype=cfg.dtype)
    for (mj, pj, ej), (mt, pt, et) in zip(record["jax"], record["torch"]):
        traj.loss.append((mj["loss"], mt["loss"]))
        traj.rel_loss.append(_rel(mj["loss"], mt["loss"]))
        traj.rel_v_loss.append(_rel(mj["v_loss"], mt["v_loss"]))
        traj.rel_grad_norm.append(_rel(mj["grad_norm"], mt["grad_norm"]))
        for name, a, b in (("rel_params", pj, pt), ("rel_ema", ej, et)):
            fa, fb = _flat(a), _flat(b)
            getattr(traj, name).append(float(np.linalg.norm(fa - fb) / np.linalg.norm(fb)))
    final = _flat(record["torch"][-1][1])
    start = _flat(init_sd)
    traj.moved = float(np.linalg.norm(final - start) / np.linalg.norm(start))
    return traj, results


def format_table(trajs: list[Trajectory], every: int = 10) -> str:
    """The divergence table: one block per dtype, a row every `every` steps (and the last)."""
    lines = []
    for tr in trajs:
        n = len(tr.rel_loss)
        lines.append(f"{tr.dtype}: {n} steps, weights moved {tr.moved:.3g} (relative L2 from the initial state)")
        lines.append(f"{'step':>6} {'loss jax':>14} {'loss torch':>14} {'rel loss':>10} {'rel v_loss':>10} "
                     f"{'rel |g|':>10} {'rel params':>10} {'rel ema':>10}")
        for i in sorted(set(range(every - 1, n, every)) | {0, n - 1}):
            lj, lt = tr.loss[i]
            lines.append(f"{i + 1:>6} {lj:>14.10f} {lt:>14.10f} {tr.rel_loss[i]:>10.2e} {tr.rel_v_loss[i]:>10.2e} "
                         f"{tr.rel_grad_norm[i]:>10.2e} {tr.rel_params[i]:>10.2e} {tr.rel_ema[i]:>10.2e}")
        worst = tr.worst()
        lines.append("worst: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        lines.append("")
    return "\n".join(lines)


def plot(trajs: list[Trajectory], png_path: str) -> str:
    """Relative divergence of the parameters, the EMA and v_loss over steps (log scale; the
    adaptive-weighted loss sits near 1 and agrees to the last digit, so v_loss is shown)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for tr, color in zip(trajs, ("tab:blue", "tab:orange", "tab:green")):
        steps = np.arange(1, len(tr.rel_params) + 1)
        floor = 1e-18  # exact agreement plots at the floor of the log axis
        ax.semilogy(steps, np.maximum(tr.rel_params, floor), color=color, label=f"{tr.dtype} params")
        ax.semilogy(steps, np.maximum(tr.rel_ema, floor), color=color, linestyle=":", label=f"{tr.dtype} EMA")
        ax.semilogy(steps, np.maximum(tr.rel_v_loss, floor), color=color, linestyle="--", label=f"{tr.dtype} v_loss")
    ax.set_xlabel("step")
    ax.set_ylabel("relative divergence JAX vs PyTorch")
    ax.set_title("cross-backend training parity (tiny DiT, same batches and noise)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.train_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="float32,float64", help="comma-separated: float32, float64")
    p.add_argument("--steps", type=positive_int, default=50)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--preset", default="tiny", help="a digits TRAIN_PRESETS entry")
    p.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="FIELD=VALUE")
    p.add_argument("--png", default="train_parity.png", help="where to write the divergence plot")
    p.add_argument("--every", type=positive_int, default=10, help="print a row every N steps")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # tiny matrices: extra threads only contend
    try:  # every recipe is checked before the first run starts
        get_preset(TRAIN_PRESETS, args.preset, "training preset")
        cfgs = [parity_config(d.strip(), args.steps, args.batch, args.preset, args.sets) for d in args.dtype.split(",")]
    except (KeyError, ValueError, TypeError) as err:
        p.error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    for cfg in cfgs:
        if get_task(cfg.task) is not DIGITS:
            p.error(f"--preset {args.preset!r} is a {cfg.task} recipe; the training parity compares digits runs")
    trajs = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in cfgs:
            trajs.append(run_pair(cfg, os.path.join(tmp, cfg.dtype))[0])
    print(format_table(trajs, args.every))
    print(f"plot: {plot(trajs, args.png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
