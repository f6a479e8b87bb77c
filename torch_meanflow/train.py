"""The PyTorch trainer: `python -m torch_meanflow.train` (flags in meanflow_common.train_cli).

A thin loop over `train_state.make_train_step`: per update k (1-based) it takes the batch
`batch_at(dataset, seed, k - 1, batch_size)` and the randomness of a `torch.Generator`
seeded with `step_seed(seed, k - 1)` (noise e, times t and r, class dropout; the global
RNG, which drives dropout, is re-seeded per update inside `fork_rng`), so a resumed run
repeats an uninterrupted one exactly. Twin of `jax_meanflow.train`: the same function
names, the same TrainConfig, the same run folder.

    digits: DiT (NCHW: the data interface's NHWC images are transposed here);
    reach:  FlowerPolicy (torch_meanflow.policy) on observations -> action chunks.
    method: "meanflow" | "flow_matching" (h = 0, no JVP) | "regression" (reach: MSE of
            -u(0, t=1, h=1 | obs) to the actions; sampled with zero noise in one step).
    dtype "bfloat16": params, optimizer and EMA in float32; the loss runs on bfloat16
    copies of the params and data (`torch.func.functional_call` with differentiable casts,
    so the gradients land on the float32 parameters).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.checks import check_float_arrays
from meanflow_common.config_compare import check_checkpoint_config
from meanflow_common.metrics import MetricsLogger, ProgressBar, check_finite, plot_losses, tensorboardx_writer
from meanflow_common.sampling import sample_inputs
from meanflow_common.train_cli import LoadedRun, RunResult, prepare_run_dir, read_run_config, run_cli
from meanflow_common.train_config import (
    TrainConfig,
    check_batch,
    config_from_dict,
    config_to_dict,
    model_config,
    objective_config,
)
from torch_meanflow.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from torch_meanflow.dit import init_dit
from torch_meanflow.objective import MeanFlowNoise, MeanFlowOutput, flow_matching_loss, meanflow_loss, sample_noise
from torch_meanflow.policy import FlowerPolicy
from torch_meanflow.solver import generate
from torch_meanflow.train_state import TrainState, compile_loss, create_train_state, make_train_step

__all__ = ["BACKEND", "make_model", "make_loss_fn", "step_seed", "step_randomness", "to_batch", "make_sampler",
           "train", "load_run", "main"]

BACKEND = "torch"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _dtypes(cfg: TrainConfig):
    """(master dtype of params/optimizer/EMA, compute dtype of the loss)."""
    compute = _DTYPES[cfg.dtype]
    return (torch.float32 if compute == torch.bfloat16 else compute), compute


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_model(cfg: TrainConfig, example_batch: Optional[dict] = None, obs_dim: Optional[int] = None) -> nn.Module:
    """The DiT, or a FlowerPolicy, initialised from cfg.seed in the master dtype.

    The reach policy needs obs_dim, given or read from `example_batch["obs"]`.
    """
    master, _ = _dtypes(cfg)
    mc = model_config(cfg)
    if cfg.task == "digits":
        return init_dit(mc, seed=cfg.seed, dtype=master, device=_device())
    if obs_dim is None:
        if example_batch is None:
            raise ValueError("the reach policy needs obs_dim or an example batch with 'obs'")
        obs_dim = int(np.shape(example_batch["obs"])[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = FlowerPolicy(mc, obs_dim=obs_dim, mf_cfg=objective_config(cfg), clip_actions=cfg.clip_actions,
                              num_tokens=cfg.obs_tokens)
    return policy.to(device=_device(), dtype=master)


def _regression_loss(u_fn, actions, cond, train: bool) -> MeanFlowOutput:
    """The reach baseline: -u(0, t=1, h=1 | cond) regressed on the actions (unweighted MSE)."""
    one = torch.ones(actions.shape[0], dtype=actions.dtype, device=actions.device)
    u = u_fn(torch.zeros_like(actions), one, one, cond, train)
    target = -actions
    per = ((u - target) ** 2).sum(dim=tuple(range(1, u.dim())))
    return MeanFlowOutput(u=u, du_dt=torch.zeros_like(u), v=target, v_g=target, u_tgt=target,
                          loss_per_sample=per, loss=per.mean(), v_loss=per.detach(), weight=torch.ones_like(per))


class _Call(nn.Module):
    """Runs fn(inner, *args) inside `functional_call`, so `inner` sees substituted params."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, fn, *args):
        return fn(self.inner, *args)


def make_loss_fn(cfg: TrainConfig, model: nn.Module) -> Callable:
    """loss_fn(model, batch, noise) -> MeanFlowOutput, for `train_state.train_step`."""
    master, compute = _dtypes(cfg)
    mf = objective_config(cfg)
    objective = meanflow_loss if cfg.method == "meanflow" else flow_matching_loss
    mc = model_config(cfg)
    uses_null = bool(mf.guidance_eq) or mf.class_dropout_prob > 0

    def core(net, batch, noise):
        if cfg.task == "digits":
            x, y = batch["x"], batch["y"]
            null_y = torch.full_like(y, mc.num_classes) if uses_null else None
            return objective(lambda z, t, h, yy, train=False: net(z, t, h, yy, train=train), x, y, noise, mf,
                             null_y=null_y)
        cond = net.encode(batch["obs"])
        if cfg.method == "regression":
            return _regression_loss(net.u_fn, batch["actions"], cond, True)
        return objective(net.u_fn, batch["actions"], cond, noise, net.mf_cfg, null_y=None, train=True)

    if compute == master:
        return core

    def cast(a):
        return a.to(compute) if torch.is_tensor(a) and a.is_floating_point() else a

    def loss_fn(net, batch, noise):
        params = {f"inner.{n}": p.to(compute) for n, p in net.named_parameters()}
        low_batch = {k: cast(v) for k, v in batch.items()}
        low_noise = MeanFlowNoise(cast(noise.e), cast(noise.t), cast(noise.r), noise.drop_mask)
        return torch.func.functional_call(_Call(net), params, (core, low_batch, low_noise))

    return loss_fn


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed that is a pure function of (seed, step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_randomness(cfg: TrainConfig, step: int, x_shape) -> MeanFlowNoise:
    """The noise of the update after `step` updates, from a Generator seeded by step_seed."""
    master, _ = _dtypes(cfg)
    device = _device()
    gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step))
    return sample_noise(tuple(x_shape), objective_config(cfg), generator=gen, device=device, dtype=master)


def to_batch(cfg: TrainConfig, batch: dict) -> dict:
    """NumPy batch of the data interface -> tensors in the master dtype (images NHWC -> NCHW)."""
    master, _ = _dtypes(cfg)
    dev = _device()
    if cfg.task == "digits":
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(batch["x"]).transpose(0, 3, 1, 2)))
        return {"x": x.to(dev, master), "y": torch.as_tensor(np.asarray(batch["y"]), dtype=torch.long, device=dev)}
    return {k: torch.as_tensor(np.asarray(batch[k])).to(dev, master) for k in ("obs", "actions")}


def make_sampler(cfg: TrainConfig, model: nn.Module, state: TrainState, use_ema: bool = True) -> Callable:
    """sample(cond, noise=None, num_steps=None, seed=0, allow_null=False) -> NumPy samples
    (twin of JAX's; the request is checked by `meanflow_common.sampling.sample_inputs`).

    cond: labels int [B] (digits) or observations [B, obs_dim] (reach). noise: e in the
    data interface's layout (digits [B, H, W, C] NHWC, reach [B, T, A]); default: drawn
    from np.random.default_rng(seed), the same numbers as the JAX sampler. Samples come
    back in that layout. flow_matching runs Euler steps with h = 0; regression uses zero
    noise and one step. Uses the state's EMA model (its trained model with use_ema=False);
    `model` is accepted for the JAX twin's signature.
    """
    net = state.ema_model if use_ema else state.model
    master, _ = _dtypes(cfg)
    dev = _device()

    def u_fn(z, t, h, y, train=False):
        h = torch.zeros_like(h) if cfg.method == "flow_matching" else h
        return net(z, t, h, y, train=train) if cfg.task == "digits" else net.u_fn(z, t, h, y, train)

    def sample(cond, noise=None, num_steps=None, seed=0, allow_null=False):
        cond, noise, steps = sample_inputs(cfg, cond, noise, num_steps, seed, allow_null)
        if cfg.task == "digits":
            noise = noise.transpose(0, 3, 1, 2)
        e = torch.as_tensor(np.ascontiguousarray(noise)).to(dev, master)
        if cfg.method == "regression":
            e = torch.zeros_like(e)
        with torch.no_grad():
            if cfg.task == "digits":
                y = torch.as_tensor(cond, dtype=torch.long, device=dev)
            else:
                y = net.encode(torch.as_tensor(cond).to(dev, master))
            x = generate(u_fn, e, y, num_steps=steps)
        if cfg.task == "reach" and cfg.clip_actions:
            x = x.clamp(-1.0, 1.0)
        x = x.cpu().numpy()
        return x.transpose(0, 2, 3, 1) if cfg.task == "digits" else x

    return sample


def _data(cfg: TrainConfig, dataset, batch_fn):
    if dataset is None or batch_fn is None:
        from meanflow_common import data

        dataset = dataset if dataset is not None else data.get_dataset(cfg.task, cfg.seed)
        batch_fn = batch_fn or data.batch_at
    return dataset, batch_fn


def _load_init(model: nn.Module, init_params) -> None:
    want = model.state_dict()
    check_float_arrays(init_params, "init_params")
    check_keys_and_shapes({k: tuple(np.shape(v)) for k, v in init_params.items()},
                          {k: tuple(v.shape) for k, v in want.items()}, "init_params")
    with torch.no_grad():
        for k, v in want.items():
            src = torch.as_tensor(np.asarray(init_params[k]) if not torch.is_tensor(init_params[k]) else init_params[k])
            v.copy_(src.to(v.dtype))


def _tb_writer(run_dir: str):
    logdir = os.path.join(run_dir, "tensorboard")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # needs the tensorboard package
        return tensorboardx_writer(logdir)
    return SummaryWriter(logdir)


def _meta(cfg: TrainConfig, step: int) -> dict:
    return {"step": step, "data_position": step, "seed": cfg.seed, "backend": BACKEND,
            "rng": "torch.Generator(step_seed(seed, step)) per update", "config": config_to_dict(cfg)}


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          dataset=None, batch_fn=None, eval_fn=None, noise_fn=None, init_params=None, on_step=None) -> RunResult:
    """Train as `cfg` says; returns a RunResult (see meanflow_common.train_cli).

    Arguments as `jax_meanflow.train.train`: dataset/batch_fn (default the built-in data),
    eval_fn(state, step, run_dir) every cfg.eval_every updates and at the end,
    noise_fn(step, batch) -> MeanFlowNoise, init_params (a state dict, checked key by
    key), on_step(step, state, metrics) after every update.
    """
    mc = model_config(cfg)
    dataset, batch_fn = _data(cfg, dataset, batch_fn)
    example = batch_fn(dataset, cfg.seed, 0, cfg.batch_size)
    check_batch(cfg, mc, example)
    model = make_model(cfg, example)
    if init_params is not None:
        _load_init(model, init_params)
    info = {"obs_dim": int(example["obs"].shape[1])} if cfg.task == "reach" else {}
    resumed = prepare_run_dir(cfg, BACKEND, mc, resume=resume, overwrite=overwrite, data_info=info)
    run_dir, ckpt_dir = cfg.out_dir, os.path.join(cfg.out_dir, "checkpoints")
    state = create_train_state(model, cfg.optim)
    last = latest_checkpoint(ckpt_dir) if resumed else None
    if last is not None:
        check_checkpoint_config(restore_checkpoint(last, state)[1], cfg, last)
    start = state.step
    logger = MetricsLogger(run_dir, start if resumed else None, _tb_writer(run_dir))
    bar = ProgressBar(cfg.steps, start, enabled=progress, every=cfg.log_every or 50)
    loss_fn = make_loss_fn(cfg, model)
    if cfg.torch_compile:
        loss_fn = compile_loss(loss_fn)
    current = {"step": start}

    def checked_loss(net, batch, noise):
        out = loss_fn(net, batch, noise)
        check_finite(current["step"], float(out.loss.detach()), last)  # before backward: the state stays good
        return out

    step_fn = make_train_step(checked_loss, cfg.optim)
    devices = [_device()] if _device().type == "cuda" else []
    losses, saved_at = {}, start if last is not None else -1
    t_log, s_log = time.perf_counter(), start
    try:
        for s in range(start, cfg.steps):
            k = current["step"] = s + 1
            batch = to_batch(cfg, batch_fn(dataset, cfg.seed, s, cfg.batch_size))
            data_shape = batch["x"].shape if cfg.task == "digits" else batch["actions"].shape
            noise = noise_fn(s, batch) if noise_fn is not None else step_randomness(cfg, s, data_shape)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(step_seed(cfg.seed, s) ^ 1)  # dropout masks: a function of (seed, step)
                metrics = step_fn(state, batch, noise)
            losses[k] = loss = float(metrics["loss"])
            if on_step is not None:
                on_step(k, state, metrics)
            if (cfg.log_every and k % cfg.log_every == 0) or k == cfg.steps:
                now = time.perf_counter()
                rate = (k - s_log) / max(now - t_log, 1e-9)
                logger.log(k, {**{n: float(v) for n, v in metrics.items()}, "steps_per_s": rate, "wall_s": now})
                t_log, s_log = now, k
            bar.update(k, loss)
            if (cfg.ckpt_every and k % cfg.ckpt_every == 0) or k == cfg.steps:
                last, saved_at = save_checkpoint(ckpt_dir, state, _meta(cfg, k), cfg.keep_last), k
            if eval_fn is not None and ((cfg.eval_every and k % cfg.eval_every == 0) or k == cfg.steps):
                eval_fn(state, k, run_dir)
    finally:
        bar.close()
        logger.close()
        plot_losses(logger.path, os.path.join(run_dir, "loss.png"), title=f"{cfg.task} {cfg.method} (torch)")
    if saved_at != state.step:
        last = save_checkpoint(ckpt_dir, state, _meta(cfg, state.step), cfg.keep_last)
    return RunResult(run_dir=run_dir, step=state.step, losses=losses, checkpoint=last, state=state, model=model)


def load_run(run_dir: str, checkpoint: Optional[str] = None, use_ema: bool = True) -> LoadedRun:
    """A trained run from its folder: config, model, state of `checkpoint` (default the
    latest) and a `make_sampler` sampler."""
    saved = read_run_config(run_dir)
    if saved.get("backend") != BACKEND:
        raise ValueError(f"{run_dir} was written by {saved.get('backend')!r}; load it with that backend "
                         "or convert its checkpoint with parity.convert.checkpoints")
    cfg = config_from_dict(saved)
    path = checkpoint or latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if path is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint")
    model = make_model(cfg, obs_dim=saved.get("data", {}).get("obs_dim"))
    state, meta = restore_checkpoint(path, create_train_state(model, cfg.optim))
    check_checkpoint_config(meta, cfg, path)
    return LoadedRun(cfg=cfg, model=model, state=state, step=int(meta["step"]), checkpoint=path,
                     sample=make_sampler(cfg, model, state, use_ema))


def main(argv=None) -> int:
    return run_cli(train, BACKEND, argv)


if __name__ == "__main__":
    sys.exit(main())
