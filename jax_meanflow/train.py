"""The JAX trainer: `python -m jax_meanflow.train` (flags in meanflow_common.train_cli).

The JAX hooks (`JaxBackend`) of the shared loop `meanflow_common.train_loop`, over the
jitted `train_state.train_step`: per update k (1-based) the batch is `batch_at(dataset,
seed, k - 1, batch_size)` and the randomness `fold_in(PRNGKey(seed), k - 1)` (noise e,
times t and r, class dropout; dropout key for the policy), drawn for the global batch, so
a resumed run repeats an uninterrupted one exactly and `devices=N` (a mesh, see
`jax_meanflow.parallel`) repeats `devices=1`. Twin of `torch_meanflow.train`: the same
function names, the same TrainConfig, the same run folder.

    task:   what cfg.task names (`meanflow_common.tasks.Task`), through its JAX hooks
            (`jax_meanflow.tasks.TaskHooks`): digits, a DiT (NHWC), labels with CFG as
            the MeanFlowConfig says; reach, a FlowerPolicy on observations -> action
            chunks; a user's registered task alike. No branch here on a task's name.
    method: what cfg.method names (`meanflow_common.train_methods.TrainMethod`), through
            its JAX hooks (`jax_meanflow.methods.MethodHooks`): its randomness, loss and
            sampler; "meanflow", "flow_matching" (h = 0, no JVP), "regression" (tasks that
            list it), "imf" and "pmf" (their own DiT; omega and interval at sampling time).
            No branch here on a method's name.
    dtype "bfloat16": params, optimizer and EMA in float32; the loss runs on bfloat16
    copies of the params and data (the cast is differentiated, so grads are float32).
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jax_meanflow import parallel, x64
from jax_meanflow.checkpoint import list_checkpoints, remove_partial, restore_checkpoint, save_checkpoint
from jax_meanflow.methods import MethodHooks, method_hooks
from jax_meanflow.tasks import KeyedModel, TaskHooks
from jax_meanflow.train_state import TrainState, create_train_state, make_train_step, train_step
from meanflow_common import train_loop
from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.checks import check_float_arrays
from meanflow_common.launch_env import LaunchEnvError
from meanflow_common.metrics import tensorboardx_writer
from meanflow_common.sampling import sample_inputs, sampling_knobs
from meanflow_common.tasks import get_task
from meanflow_common.train_cli import LoadedRun, RunResult, run_cli
from meanflow_common.train_config import TrainConfig, model_config, objective_config
from meanflow_common.train_loop import TrainBackend, World, run_training

__all__ = ["BACKEND", "JaxBackend", "task_hooks", "make_model", "make_loss_fn", "compiled_train_step",
           "step_randomness", "to_batch", "make_sampler", "train", "load_run", "main"]

BACKEND = "jax"


def _dtypes(dtype_name: str):
    """(master dtype of params/optimizer/EMA, compute dtype of the loss) of TrainConfig.dtype."""
    if dtype_name == "float64":
        if not jax.config.jax_enable_x64:
            raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) (the CLI sets it)")
        return jnp.float64, jnp.float64
    return jnp.float32, (jnp.bfloat16 if dtype_name == "bfloat16" else jnp.float32)


def task_hooks(cfg: TrainConfig) -> TaskHooks:
    """The JAX hooks of cfg.task (`meanflow_common.tasks.Task.backend_hooks`)."""
    task = get_task(cfg.task)
    hooks = task.backend_hooks(BACKEND)
    if not isinstance(hooks, TaskHooks):
        raise TypeError(f"task {task.name!r}: its jax hooks must be a jax_meanflow.tasks.TaskHooks, "
                        f"got {type(hooks).__name__}")
    return hooks


def make_model(cfg: TrainConfig, example_batch: Optional[dict] = None, info: Optional[dict] = None):
    """(model, params) of the task's network (digits: the DiT module and its init; reach: a
    FlowerPolicy and its params), from cfg.seed in the master dtype.

    info: the run's data facts (`Task.run_info`, e.g. the reach policy's obs_dim), given or
    read from `example_batch`.
    """
    master, _ = _dtypes(cfg.dtype)
    facts = get_task(cfg.task).model_info(example_batch, info)
    build = method_hooks(cfg).build
    if build is not None:  # the method trains its own network family (iMF, pMF)
        return build(cfg, task_hooks(cfg), facts, master)
    return task_hooks(cfg).build(cfg, facts, master)


def make_loss_fn(cfg: TrainConfig, model) -> Callable:
    """loss_fn(params, batch, noise) -> (loss in the master dtype, MeanFlowOutput).

    One function object per (task, method, dtype, model, objective), so jit compiles the
    train step once per process for repeated runs of the same recipe.
    """
    hooks = task_hooks(cfg)
    return _loss_fn(get_task(cfg.task), hooks, method_hooks(cfg), cfg.dtype, model_config(cfg), objective_config(cfg),
                    KeyedModel(hooks, model))


@functools.lru_cache(maxsize=32)
def _loss_fn(task, hooks, mhooks: MethodHooks, dtype_name, mc, settings, keyed):
    master, compute = _dtypes(dtype_name)
    cast = functools.partial(jax.tree.map, lambda a: a.astype(compute) if jnp.issubdtype(a.dtype, jnp.floating) else a)
    model = keyed.model

    def loss_fn(params, batch, noise):
        data, cond = batch[task.data_key].astype(compute), cast(batch[task.cond_key])
        out = mhooks.loss(hooks, model, cast(params), data, cond, cast(noise), settings, batch.get("dropout_rng"))
        return out.loss.astype(master), out

    return loss_fn


@functools.lru_cache(maxsize=16)
def _compiled_draw(shape, mhooks: MethodHooks, settings, dtype_name, backend):
    def draw(seed_key, step):
        k_noise, k_dropout = jax.random.split(jax.random.fold_in(seed_key, step))
        return mhooks.draw(k_noise, shape, settings, jnp.dtype(dtype_name)), k_dropout

    lowered = jax.jit(draw).lower(jax.random.PRNGKey(0), np.uint32(0))
    # A few hundred random numbers per step: XLA's CPU optimiser would spend seconds on
    # the unrolled threefry code for no measurable gain at run time.
    return lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if backend == "cpu" else None)


def step_randomness(cfg: TrainConfig, step: int, x_shape) -> tuple[Any, Any]:
    """(noise, dropout key) of the update after `step` updates: fold_in(PRNGKey(seed), step);
    the noise is the method's (MeanFlowNoise; IMFNoise / PMFNoise for imf / pmf)."""
    master, _ = _dtypes(cfg.dtype)
    shape = tuple(int(s) for s in x_shape)
    draw = _compiled_draw(shape, method_hooks(cfg), objective_config(cfg), jnp.dtype(master).name,
                          jax.default_backend())
    return draw(jax.random.PRNGKey(cfg.seed), np.uint32(step))


def to_batch(cfg: TrainConfig, batch: dict) -> dict:
    """NumPy batch of the data interface -> jnp arrays: the task's data in the master dtype
    (images stay NHWC), its conditioning by the hooks' cond_array (digits labels int32)."""
    master, _ = _dtypes(cfg.dtype)
    task, hooks = get_task(cfg.task), task_hooks(cfg)
    return {k: (hooks.cond_array(batch[k], master) if k == task.cond_key else jnp.asarray(batch[k], master))
            for k in task.batch_keys}


def make_sampler(cfg: TrainConfig, model, state: TrainState, use_ema: bool = True) -> Callable:
    """sample(cond, noise=None, num_steps=None, seed=0, allow_null=False, **knobs) -> NumPy samples.

    The request is checked on the host first (`meanflow_common.sampling.sample_inputs`:
    the task's `check_cond`, e.g. integer labels in [0, num_classes), the null class only
    with allow_null; num_steps >= 1).

    cond: labels int [B] (digits) or observations [B, obs_dim] (reach). noise: e in the
    data's layout (digits [B, H, W, C] NHWC, reach [B, T, A]); default: drawn from
    np.random.default_rng(seed), so both backends sample from the same noise.
    num_steps default: the method settings' num_steps. flow_matching runs Euler steps with
    h = 0; regression uses zero noise and one step. knobs: the method's sampling knobs
    (imf / pmf: omega, t_min, t_max, each a number or [B]; default the settings'
    sample_omega, sample_t_min, sample_t_max), checked by
    `meanflow_common.sampling.sampling_knobs`. Runs jitted, in the master dtype.
    """
    master, _ = _dtypes(cfg.dtype)
    params = state.ema_params if use_ema else state.params
    hooks = task_hooks(cfg)
    keyed = KeyedModel(hooks, model)
    settings = objective_config(cfg)

    def sample(cond, noise=None, num_steps=None, seed=0, allow_null=False, **knobs):
        # checked on the host: under jit a bad label would silently index the wrong row
        cond, noise, steps = sample_inputs(cfg, cond, noise, num_steps, seed, allow_null)
        knobs = {k: jnp.asarray(v, master) for k, v in sampling_knobs(cfg, cond.shape[0], knobs).items()}
        run = _sampler(hooks, method_hooks(cfg), settings, keyed, steps)
        args = (params, jnp.asarray(noise, master), hooks.cond_array(cond, master), knobs)
        if _fast(cfg):
            return np.asarray(_fast_call(run, functools.partial(run.lower, *args), *args))
        return np.asarray(run(*args))

    return sample


@functools.lru_cache(maxsize=32)
def _sampler(hooks, mhooks: MethodHooks, settings, keyed, num_steps):
    model = keyed.model

    @jax.jit
    def run(params, e, cond, knobs):
        return hooks.finish(model, mhooks.sample(hooks, model, params, e, cond, settings, num_steps, knobs))

    return run


def _fast(cfg: TrainConfig) -> bool:
    return cfg.fast_compile and jax.default_backend() == "cpu"


_EXECUTABLES: dict = {}


def _fast_call(key, lower: Callable, *args):
    """Run `lower().compile(...)` (no XLA backend optimisations), cached per key and avals."""
    avals = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), args)
    full_key = (key, str(jax.tree.structure(avals)), tuple(jax.tree.leaves(avals)))
    if full_key not in _EXECUTABLES:
        _EXECUTABLES[full_key] = lower().compile(compiler_options={"xla_backend_optimization_level": 0})
    return _EXECUTABLES[full_key](*args)


def _fast_step(loss_fn: Callable, optim_cfg) -> Callable:
    """`train_state.train_step` compiled without XLA's backend optimisations."""

    def step(state, batch, noise):
        lower = functools.partial(train_step.lower, state, loss_fn, batch, noise, optim_cfg)
        return _fast_call((loss_fn, optim_cfg), lower, state, batch, noise)

    return step


def compiled_train_step(cfg: TrainConfig, loss_fn: Callable) -> Callable:
    """step(state, batch, noise) -> (state, metrics) of `train_state.train_step` on one device:
    jitted, or with cfg.fast_compile on a CPU compiled without XLA's backend optimisations."""
    return _fast_step(loss_fn, cfg.optim) if _fast(cfg) else make_train_step(loss_fn, cfg.optim)


def _checked_params(given, template):
    want = jax.tree_util.tree_flatten_with_path(template)[0]
    got = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(given)[0])
    check_float_arrays(got, "init_params")
    check_keys_and_shapes({k: np.shape(v) for k, v in got.items()},
                          {jax.tree_util.keystr(p): leaf.shape for p, leaf in want}, "init_params")
    out = [jnp.asarray(got[jax.tree_util.keystr(path)], leaf.dtype) for path, leaf in want]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


@functools.lru_cache(maxsize=16)
def _sharded_step(loss_fn: Callable, optim_cfg, mesh):
    """`train_step` jitted with the new state and the metrics replicated on `mesh`."""
    rep = parallel.replicated(mesh)

    def step(state, batch, noise):
        return train_step(state, loss_fn, batch, noise, optim_cfg)

    return jax.jit(step, out_shardings=(rep, rep))


class JaxBackend(TrainBackend):
    """The JAX hooks of `meanflow_common.train_loop`; `devices` > 1 (or several processes
    after `jax.distributed.initialize`) runs the step on a `jax_meanflow.parallel` mesh."""

    name = BACKEND
    rng_rule = "fold_in(PRNGKey(seed), step) per update, drawn for the global batch"

    def world(self, cfg: TrainConfig) -> World:
        n = len(parallel.make_mesh(cfg.devices).devices.flat)
        if jax.process_count() == 1:
            return World(processes=1, rank=0, devices=n)
        return World(processes=jax.process_count(), rank=jax.process_index(), devices=n, share=parallel.share,
                     collective=True)

    def make_model(self, cfg, example=None, info=None):
        return make_model(cfg, example, info)

    def create_state(self, cfg, model, params, init_params=None):
        if init_params is not None:
            params = _checked_params(init_params, params)
        return create_train_state(params, cfg.optim)

    def place(self, state, world):
        return parallel.replicate(state, parallel.make_mesh(world.devices)) if world.devices > 1 else state

    def make_step(self, cfg, model, world):
        task, hooks = get_task(cfg.task), task_hooks(cfg)
        loss_fn = make_loss_fn(cfg, model)
        mesh = parallel.make_mesh(world.devices) if world.devices > 1 else None
        if mesh is None:
            run = compiled_train_step(cfg, loss_fn)
        else:
            jitted = _sharded_step(loss_fn, cfg.optim, mesh)

            def run(state, batch, noise):
                if _fast(cfg):
                    lower = functools.partial(jitted.lower, state, batch, noise)
                    return _fast_call((loss_fn, cfg.optim, mesh), lower, state, batch, noise)
                return jitted(state, batch, noise)

        def step(state, s, np_batch, noise_fn, check_loss):
            batch = to_batch(cfg, np_batch)
            shape = batch[task.data_key].shape
            noise, dropout_key = step_randomness(cfg, s, shape)
            if noise_fn is not None:
                noise = noise_fn(s, batch)
            if mesh is not None:
                batch, noise = parallel.shard_batch(batch, mesh), parallel.shard_batch(noise, mesh)
                dropout_key = parallel.replicate(dropout_key, mesh)
            if hooks.dropout:
                batch["dropout_rng"] = dropout_key
            new_state, metrics = run(state, batch, noise)
            metrics = {k: parallel.host_value(v) for k, v in metrics.items()}
            check_loss(float(metrics["weighted_loss"]))
            if mesh is not None and s < cfg.sync_check_steps:
                parallel.check_replicas((new_state.params, new_state.ema_params), s + 1)
            return new_state, metrics

        return step

    def state_step(self, state):
        return int(parallel.host_value(state.step))

    def list_checkpoints(self, ckpt_dir):
        return list_checkpoints(ckpt_dir)

    def checkpoint_path(self, ckpt_dir, step):
        return os.path.join(os.path.abspath(ckpt_dir), str(step))

    def save_checkpoint(self, ckpt_dir, state, meta, keep_last):
        return save_checkpoint(ckpt_dir, state, meta, keep_last)

    def restore_checkpoint(self, path, state):
        return restore_checkpoint(path, state)

    def remove_partial(self, ckpt_dir):
        return remove_partial(ckpt_dir)

    def tb_writer(self, run_dir):
        return tensorboardx_writer(os.path.join(run_dir, "tensorboard"))

    def make_sampler(self, cfg, model, state, use_ema=True):
        return make_sampler(cfg, model, state, use_ema)

    def runtime(self):
        # the XLA flags set the CPU thread pool: recorded so a run made under other flags can be
        # told apart (docs/TRAINING.md, "Reproducing a run")
        return {"jax": jax.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                "device": str(jax.devices()[0].platform)}


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          dataset=None, batch_fn=None, eval_fn=None, noise_fn=None, init_params=None, on_step=None) -> RunResult:
    """Train as `cfg` says; returns a RunResult (see meanflow_common.train_cli).

    dataset, batch_fn: the data (default `meanflow_common.tasks.get_dataset(task, seed)`
    and `batch_at`). eval_fn(state, step, run_dir): called every cfg.eval_every updates and
    at the end (e.g. sample grids, rollouts; see `make_sampler`). noise_fn(step, batch) ->
    the method's noise (MeanFlowNoise, IMFNoise, PMFNoise) of the global batch replaces the built-in randomness (cross-backend
    parity); init_params replaces the initial parameters (checked key by key);
    on_step(step, state, metrics) runs after every update. The loop itself is
    `meanflow_common.train_loop.run_training`.
    """
    return run_training(JaxBackend(), cfg, resume=resume, overwrite=overwrite, progress=progress, dataset=dataset,
                        batch_fn=batch_fn, eval_fn=eval_fn, noise_fn=noise_fn, init_params=init_params,
                        on_step=on_step)


def load_run(run_dir: str, checkpoint: Optional[str] = None, use_ema: bool = True) -> LoadedRun:
    """A trained run from its folder: config, model, state of `checkpoint` (default the
    newest readable one) and a `make_sampler` sampler."""
    return train_loop.load_run(JaxBackend(), run_dir, checkpoint, use_ema)


def _prepare(cfg: TrainConfig) -> None:
    x64.enable_for(cfg.dtype)


def main(argv=None) -> int:
    """The CLI; several processes join one run when JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID are set in each (`parallel.distributed_from_env`;
    a partial set is refused, exit status 2)."""
    try:
        parallel.distributed_from_env()
    except LaunchEnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run_cli(train, BACKEND, argv, prepare=_prepare)


if __name__ == "__main__":
    sys.exit(main())
