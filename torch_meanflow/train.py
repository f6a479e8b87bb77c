"""The PyTorch trainer: `python -m torch_meanflow.train` (flags in meanflow_common.train_cli).

The PyTorch hooks (`TorchBackend`) of the shared loop `meanflow_common.train_loop`, over
`train_state.train_step`: per update k (1-based) the batch is `batch_at(dataset, seed,
k - 1, batch_size)` and the randomness comes from a `torch.Generator` seeded with
`step_seed(seed, k - 1)` (noise e, times t and r, class dropout, drawn for the global
batch; the global RNG, which drives dropout, is re-seeded per update and rank inside
`fork_rng`), so a resumed run repeats an uninterrupted one exactly, and a torchrun run of
N processes (each taking its slice; `torch_meanflow.parallel`) repeats the 1-process run
when the model has no dropout. Twin of `jax_meanflow.train`: the same function names, the
same TrainConfig, the same run folder.

    task:   what cfg.task names (`meanflow_common.tasks.Task`), through its torch hooks
            (`torch_meanflow.tasks.TaskHooks`): digits, a DiT (NCHW: the data
            interface's NHWC images are transposed by the hooks); reach, a FlowerPolicy
            on observations -> action chunks; a user's registered task alike. No branch
            here on a task's name.
    method: what cfg.method names (`meanflow_common.train_methods.TrainMethod`), through
            its torch hooks (`torch_meanflow.methods.MethodHooks`): its randomness, loss and
            sampler; "meanflow", "flow_matching" (h = 0, no JVP), "regression" (tasks that
            list it), "imf" and "pmf" (their own DiT; omega and interval at sampling time).
            No branch here on a method's name.
    dtype "bfloat16": params, optimizer and EMA in float32; the loss runs on bfloat16
    copies of the params and data (`torch.func.functional_call` with differentiable casts,
    so the gradients land on the float32 parameters).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from meanflow_common import train_loop
from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.checks import check_float_arrays
from meanflow_common.launch_env import LaunchEnvError
from meanflow_common.metrics import tensorboardx_writer
from meanflow_common.sampling import sample_inputs, sampling_knobs
from meanflow_common.tasks import get_task
from meanflow_common.train_cli import LoadedRun, RunResult, run_cli
from meanflow_common.train_config import TrainConfig, objective_config
from meanflow_common.train_loop import TrainBackend, World, run_training
from torch_meanflow import parallel
from torch_meanflow.checkpoint import list_checkpoints, remove_partial, restore_checkpoint, save_checkpoint
from torch_meanflow.methods import method_hooks
from torch_meanflow.tasks import TaskHooks
from torch_meanflow.train_state import TrainState, compile_loss, create_train_state, train_step

__all__ = ["BACKEND", "TorchBackend", "task_hooks", "make_model", "make_loss_fn", "step_seed", "step_randomness",
           "to_batch", "make_sampler", "train", "load_run", "main"]

BACKEND = "torch"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _dtypes(cfg: TrainConfig):
    """(master dtype of params/optimizer/EMA, compute dtype of the loss)."""
    compute = _DTYPES[cfg.dtype]
    return (torch.float32 if compute == torch.bfloat16 else compute), compute


def _device() -> torch.device:
    # under torchrun, parallel.init_world has made this process's GPU the current one
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def task_hooks(cfg: TrainConfig) -> TaskHooks:
    """The PyTorch hooks of cfg.task (`meanflow_common.tasks.Task.backend_hooks`)."""
    task = get_task(cfg.task)
    hooks = task.backend_hooks(BACKEND)
    if not isinstance(hooks, TaskHooks):
        raise TypeError(f"task {task.name!r}: its torch hooks must be a torch_meanflow.tasks.TaskHooks, "
                        f"got {type(hooks).__name__}")
    return hooks


def make_model(cfg: TrainConfig, example_batch: Optional[dict] = None, info: Optional[dict] = None) -> nn.Module:
    """The task's network (digits: the DiT; reach: a FlowerPolicy), initialised from cfg.seed
    in the master dtype.

    info: the run's data facts (`Task.run_info`, e.g. the reach policy's obs_dim), given or
    read from `example_batch`.
    """
    master, _ = _dtypes(cfg)
    facts = get_task(cfg.task).model_info(example_batch, info)
    build = method_hooks(cfg).build
    if build is not None:  # the method trains its own network family (iMF, pMF)
        return build(cfg, task_hooks(cfg), facts, master, _device())
    return task_hooks(cfg).build(cfg, facts, master, _device())


class _Call(nn.Module):
    """Runs fn(inner, *args) inside `functional_call`, so `inner` sees substituted params."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, fn, *args):
        return fn(self.inner, *args)


def make_loss_fn(cfg: TrainConfig, model: nn.Module) -> Callable:
    """loss_fn(model, batch, noise) -> the method's output (loss, loss_per_sample, v_loss), for
    `train_state.train_step`."""
    master, compute = _dtypes(cfg)
    settings = objective_config(cfg)
    task, hooks, mhooks = get_task(cfg.task), task_hooks(cfg), method_hooks(cfg)

    def core(net, batch, noise):
        return mhooks.loss(hooks, net, batch[task.data_key], batch[task.cond_key], noise, settings)

    if compute == master:
        return core

    def cast(a):
        return a.to(compute) if torch.is_tensor(a) and a.is_floating_point() else a

    def loss_fn(net, batch, noise):
        params = {f"inner.{n}": p.to(compute) for n, p in net.named_parameters()}
        low_batch = {k: cast(v) for k, v in batch.items()}
        low_noise = noise.to(dtype=compute)
        return torch.func.functional_call(_Call(net), params, (core, low_batch, low_noise))

    return loss_fn


def step_seed(seed: int, step: int) -> int:
    """A 63-bit seed that is a pure function of (seed, step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_randomness(cfg: TrainConfig, step: int, x_shape):
    """The method's noise (MeanFlowNoise; IMFNoise / PMFNoise for imf / pmf) of the update
    after `step` updates, from a Generator seeded by step_seed."""
    master, _ = _dtypes(cfg)
    device = _device()
    gen = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step))
    return method_hooks(cfg).draw(tuple(x_shape), objective_config(cfg), gen, device, master)


def to_batch(cfg: TrainConfig, batch: dict) -> dict:
    """NumPy batch of the data interface -> tensors: the task's data in the master dtype and
    the network's layout (digits NHWC -> NCHW), its conditioning by the hooks' cond_tensor
    (digits labels int64)."""
    master, _ = _dtypes(cfg)
    dev = _device()
    task, hooks = get_task(cfg.task), task_hooks(cfg)

    def tensor(k):
        if k == task.cond_key:
            return hooks.cond_tensor(batch[k], dev, master)
        data = np.asarray(batch[k])
        data = np.ascontiguousarray(hooks.to_layout(data)) if k == task.data_key else data
        return torch.as_tensor(data).to(dev, master)

    return {k: tensor(k) for k in task.batch_keys}


def make_sampler(cfg: TrainConfig, model: nn.Module, state: TrainState, use_ema: bool = True) -> Callable:
    """sample(cond, noise=None, num_steps=None, seed=0, allow_null=False, **knobs) -> NumPy
    samples (twin of JAX's; the request is checked by `meanflow_common.sampling.sample_inputs`
    and the method's knobs, e.g. iMF's omega, t_min, t_max, by `sampling_knobs`).

    cond: labels int [B] (digits) or observations [B, obs_dim] (reach). noise: e in the
    data interface's layout (digits [B, H, W, C] NHWC, reach [B, T, A]); default: drawn
    from np.random.default_rng(seed), the same numbers as the JAX sampler. Samples come
    back in that layout. The method's hooks sample (flow_matching: Euler steps with h = 0;
    regression: zero noise and one step). Uses the state's EMA model (its trained model with use_ema=False);
    `model` is accepted for the JAX twin's signature.
    """
    net = state.ema_model if use_ema else state.model
    master, _ = _dtypes(cfg)
    dev = _device()
    hooks, mhooks, settings = task_hooks(cfg), method_hooks(cfg), objective_config(cfg)

    def sample(cond, noise=None, num_steps=None, seed=0, allow_null=False, **knobs):
        cond, noise, steps = sample_inputs(cfg, cond, noise, num_steps, seed, allow_null)
        knobs = {k: torch.as_tensor(v).to(dev, master) for k, v in sampling_knobs(cfg, cond.shape[0], knobs).items()}
        e = torch.as_tensor(np.ascontiguousarray(hooks.to_layout(noise))).to(dev, master)
        with torch.no_grad():
            x = mhooks.sample(hooks, net, e, hooks.cond_tensor(cond, dev, master), settings, steps, knobs)
            x = hooks.finish(net, x)
        return hooks.from_layout(x.cpu().numpy())

    return sample


def _load_init(model: nn.Module, init_params) -> None:
    want = model.state_dict()
    check_float_arrays(init_params, "init_params")
    check_keys_and_shapes({k: tuple(np.shape(v)) for k, v in init_params.items()},
                          {k: tuple(v.shape) for k, v in want.items()}, "init_params")
    with torch.no_grad():
        for k, v in want.items():
            src = torch.as_tensor(np.asarray(init_params[k]) if not torch.is_tensor(init_params[k]) else init_params[k])
            v.copy_(src.to(v.dtype))


def _slice(batch: dict, noise, world: World, keys: tuple):
    """This rank's contiguous slice of the global batch (its entries `keys`) and of its
    randomness (every field of the method's noise is per sample)."""
    if world.processes == 1:
        return batch, noise
    b = noise.e.shape[0] // world.processes
    part = slice(world.rank * b, (world.rank + 1) * b)
    return ({k: v[part] for k, v in batch.items() if k in keys},
            type(noise)(**{f.name: getattr(noise, f.name)[part] for f in dataclasses.fields(noise)}))


class TorchBackend(TrainBackend):
    """The PyTorch hooks of `meanflow_common.train_loop`; under torchrun, data-parallel
    with the gradient all-reduce of `torch_meanflow.parallel`.

    sync: all-reduce the gradients (only a negative control turns it off, to show that
    `parallel.check_in_sync` catches the missing sync).
    """

    name = BACKEND
    rng_rule = "torch.Generator(step_seed(seed, step)) per update, drawn for the global batch"

    def __init__(self, sync: bool = True):
        self.sync = sync

    def world(self, cfg):
        return parallel.init_world(cfg.devices)

    def make_model(self, cfg, example=None, info=None):
        model = make_model(cfg, example, info)
        return model, model

    def create_state(self, cfg, model, params, init_params=None):
        if init_params is not None:
            _load_init(model, init_params)
        return create_train_state(model, cfg.optim)

    def place(self, state, world):
        if world.processes > 1:
            parallel.broadcast_module(state.model)
            parallel.broadcast_module(state.ema_model)
        return state

    def make_step(self, cfg, model, world):
        task, hooks = get_task(cfg.task), task_hooks(cfg)
        loss_fn = make_loss_fn(cfg, model)
        if cfg.torch_compile:
            loss_fn = compile_loss(loss_fn)
        multi = world.processes > 1
        grad_sync = parallel.sync_gradients if (multi and self.sync) else None
        devices = [_device()] if _device().type == "cuda" else []

        def step(state, s, np_batch, noise_fn, check_loss):
            if noise_fn is None:  # only this rank's slice of the data goes to its device
                # the noise in the network's layout, as to_batch puts the data (DiT: NCHW)
                shape = hooks.layout_shape(np.shape(np_batch[task.data_key]))
                batch, noise = _slice(np_batch, step_randomness(cfg, s, shape), world, task.batch_keys)
                batch = to_batch(cfg, batch)
            else:
                batch = to_batch(cfg, np_batch)
                batch, noise = _slice(batch, noise_fn(s, batch), world, task.batch_keys)
            seen = {}

            def checked_loss(net, b, n):
                out = loss_fn(net, b, n)
                seen["loss"] = parallel.mean_over_ranks(out.loss) if multi else out.loss.detach()
                check_loss(float(seen["loss"]))  # before backward: the state stays good
                return out

            with torch.random.fork_rng(devices=devices):
                # dropout masks: a function of (seed, step, rank)
                torch.manual_seed((step_seed(cfg.seed, s) ^ 1) + world.rank)
                metrics = train_step(state, checked_loss, batch, noise, cfg.optim, grad_sync=grad_sync)
            if multi:
                metrics = {**metrics, "weighted_loss": seen["loss"],
                           **{k: parallel.mean_over_ranks(metrics[k]) for k in ("loss", "v_loss")}}
                if s < cfg.sync_check_steps:
                    parallel.check_in_sync(state.model, s + 1, state.ema_model)
            return state, metrics

        return step

    def state_step(self, state):
        return int(state.step)

    def list_checkpoints(self, ckpt_dir):
        return list_checkpoints(ckpt_dir)

    def checkpoint_path(self, ckpt_dir, step):
        return os.path.join(ckpt_dir, f"ckpt_{step:08d}.pt")

    def save_checkpoint(self, ckpt_dir, state, meta, keep_last):
        return save_checkpoint(ckpt_dir, state, meta, keep_last)

    def restore_checkpoint(self, path, state):
        return restore_checkpoint(path, state)

    def remove_partial(self, ckpt_dir):
        return remove_partial(ckpt_dir)

    def tb_writer(self, run_dir):
        logdir = os.path.join(run_dir, "tensorboard")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # needs the tensorboard package
            return tensorboardx_writer(logdir)
        return SummaryWriter(logdir)

    def make_sampler(self, cfg, model, state, use_ema=True):
        return make_sampler(cfg, model, state, use_ema)

    def runtime(self):
        # CPU kernels split their reductions by the intra-op thread count: the same seed
        # gives other float32 weights with another count (docs/TRAINING.md, "Reproducing a run")
        return {"torch": torch.__version__, "intra_op_threads": torch.get_num_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", ""), "device": str(_device())}


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          dataset=None, batch_fn=None, eval_fn=None, noise_fn=None, init_params=None, on_step=None) -> RunResult:
    """Train as `cfg` says; returns a RunResult (see meanflow_common.train_cli).

    Arguments as `jax_meanflow.train.train`: dataset/batch_fn (default the built-in data),
    eval_fn(state, step, run_dir) every cfg.eval_every updates and at the end (rank 0),
    noise_fn(step, batch) -> the method's noise of the global batch, init_params (a state dict,
    checked key by key), on_step(step, state, metrics) after every update. Under torchrun
    every rank runs this; rank 0 alone writes the run folder.
    """
    return run_training(TorchBackend(), cfg, resume=resume, overwrite=overwrite, progress=progress, dataset=dataset,
                        batch_fn=batch_fn, eval_fn=eval_fn, noise_fn=noise_fn, init_params=init_params,
                        on_step=on_step)


def load_run(run_dir: str, checkpoint: Optional[str] = None, use_ema: bool = True) -> LoadedRun:
    """A trained run from its folder: config, model, state of `checkpoint` (default the
    newest readable one) and a `make_sampler` sampler."""
    return train_loop.load_run(TorchBackend(), run_dir, checkpoint, use_ema)


def main(argv=None) -> int:
    try:
        parallel.check_launch_env()  # a partial torchrun environment: exit status 2
    except LaunchEnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ok = False
    try:
        status = run_cli(train, BACKEND, argv)
        ok = status == 0
        return status
    finally:
        parallel.finish(ok)


if __name__ == "__main__":
    sys.exit(main())
