"""The one training loop of both trainers, framework-free, over a backend object.

`jax_meanflow.train.train` and `torch_meanflow.train.train` are `run_training(backend,
cfg, ...)` with their own `TrainBackend`. The loop owns what the two share: the data
order, the run folder (lock, config.json, refusal of an existing run, resume), the
checkpoint cadence and keep-last-k, the NaN stop, metrics, the progress bar, evaluation,
and the rank-0-writes rule of a data-parallel run. What depends on the task (its data,
its network, its batch) comes from its `meanflow_common.tasks.Task`, which the backend
asks for its own hooks. The backend supplies the framework:

    world(cfg) -> World                 processes, rank, data-parallel devices
    make_model(cfg, example, info)      -> (model, params): params is what create_state takes;
                                        info: the run's data facts (Task.run_info), else
                                        read from the example batch
    create_state(cfg, model, params, init_params) -> state
    place(state, world) -> state        replicate on the devices / make every rank equal
    make_step(cfg, model, world)        -> step(state, s, batch, noise_fn, check_loss) -> (state, metrics)
    state_step(state) -> int
    list_checkpoints(ckpt_dir) -> [(step, path)], oldest first
    checkpoint_path(ckpt_dir, step) -> path
    save_checkpoint(ckpt_dir, state, meta, keep_last) -> path
    restore_checkpoint(path, state) -> (state, meta); UnreadableCheckpointError when the
                                        file cannot be read (truncated, garbage)
    remove_partial(ckpt_dir) -> [paths] leftovers of interrupted saves, deleted
    tb_writer(run_dir), make_sampler(cfg, model, state, use_ema)
    runtime() -> dict                   what the framework runs with (versions, intra-op
                                        threads...), recorded in config.json: on a CPU the
                                        torch trajectory depends on its thread count

`step` gets the update index s (0-based), the global NumPy batch `batch_at(dataset, seed,
s, batch_size)` and `check_loss(loss: float)`, which it must call with the global loss
before the update is applied (it raises NonFiniteLossError). It draws the randomness of
the global batch as on one device and gives each device its slice; `noise_fn(s, batch)`
(the backend's global batch) replaces that randomness.
"""
from __future__ import annotations

import abc
import functools
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from meanflow_common.checks import UnreadableCheckpointError
from meanflow_common.config_compare import check_checkpoint_config
from meanflow_common.data.augment import with_obs_noise
from meanflow_common.metrics import MetricsLogger, ProgressBar, check_finite, plot_losses
from meanflow_common.run_lock import RunLock
from meanflow_common.tasks import get_task
from meanflow_common.train_cli import (LoadedRun, RunResult, check_resume_step, prepare_run_dir, read_run_config,
                                      write_run_config)
from meanflow_common.train_config import TrainConfig, check_batch, config_from_dict, config_to_dict, model_config

__all__ = ["World", "UnreadableCheckpointError", "TrainBackend", "run_training", "load_run", "restore_newest",
           "checkpoint_meta"]


def _same(value):
    return value


@dataclass(frozen=True)
class World:
    """Where a run executes. processes: trainer processes (torchrun ranks); rank: this
    process; devices: data-parallel devices in all (JAX: the mesh; PyTorch: one per
    process). share(value) returns rank 0's `value` on every rank (a collective: every
    rank calls it). collective: the arrays span the processes (JAX multi-process), so
    every process takes part in checkpoint writes and evaluation; otherwise rank 0 alone
    does them (torchrun: each rank holds a full copy)."""

    processes: int = 1
    rank: int = 0
    devices: int = 1
    share: Callable[[Any], Any] = field(default=_same, compare=False, repr=False)
    collective: bool = False

    @property
    def writer(self) -> bool:
        """Only rank 0 writes the run folder."""
        return self.rank == 0

    def describe(self) -> dict:
        return {"processes": self.processes, "devices": self.devices}


class TrainBackend(abc.ABC):
    """The hooks `run_training` calls (see the module doc); each backend subclasses it."""

    name = ""
    rng_rule = ""

    def world(self, cfg: TrainConfig) -> World:
        if cfg.devices not in (0, 1):
            raise ValueError(f"TrainConfig.devices={cfg.devices}: the {self.name} trainer runs on one device here")
        return World()

    def place(self, state, world: World):
        return state

    def remove_partial(self, ckpt_dir: str) -> list:
        return []

    def tb_writer(self, run_dir: str):
        return None

    def runtime(self) -> dict:
        """What the framework runs with, for config.json's "runtime" record (a float32 run is
        bit-identical for a seed only where these agree; see docs/TRAINING.md)."""
        return {}

    @abc.abstractmethod
    def make_model(self, cfg: TrainConfig, example: Optional[dict] = None, info: Optional[dict] = None):
        """(model, params); info: the run's data facts (`Task.run_info`), else read from `example`."""

    @abc.abstractmethod
    def create_state(self, cfg: TrainConfig, model, params, init_params=None):
        """The train state at step 0 (init_params, checked key by key, replace the initial ones)."""

    @abc.abstractmethod
    def make_step(self, cfg: TrainConfig, model, world: World) -> Callable:
        """step(state, s, batch, noise_fn, check_loss) -> (state, metrics)."""

    @abc.abstractmethod
    def state_step(self, state) -> int:
        """Updates done."""

    @abc.abstractmethod
    def list_checkpoints(self, ckpt_dir: str) -> list:
        """[(step, path)] oldest first."""

    @abc.abstractmethod
    def checkpoint_path(self, ckpt_dir: str, step: int) -> str:
        """Where the checkpoint of `step` is written."""

    @abc.abstractmethod
    def save_checkpoint(self, ckpt_dir: str, state, meta: dict, keep_last: int) -> str:
        """Write the state; returns its path."""

    @abc.abstractmethod
    def restore_checkpoint(self, path: str, state):
        """(state, meta); UnreadableCheckpointError for a file that cannot be read."""

    @abc.abstractmethod
    def make_sampler(self, cfg: TrainConfig, model, state, use_ema: bool = True) -> Callable:
        """sample(cond, noise=None, num_steps=None, seed=0) -> NumPy samples."""


def _data(cfg: TrainConfig, dataset, batch_fn):
    if dataset is None or batch_fn is None:
        from meanflow_common import data

        dataset = dataset if dataset is not None else get_task(cfg.task).dataset(cfg.seed)
        batch_fn = batch_fn or data.batch_at
    return dataset, with_obs_noise(batch_fn, get_task(cfg.task).cond_key, cfg.obs_noise)


def _on_writer(world: World, fn: Callable[[], Any]):
    """fn() on rank 0; its result, or its exception, on every rank."""
    if world.processes == 1:
        return fn()
    if world.writer:
        try:
            out = ("ok", fn())
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            out = ("error", err)
        world.share(out)
    else:
        out = world.share(None)
    if out[0] == "error":
        raise out[1]
    return out[1]


def restore_newest(backend: TrainBackend, ckpt_dir: str, state, set_aside: bool = False,
                   accept: Optional[Callable[[dict, str], None]] = None):
    """(state, meta, path) of the newest checkpoint that reads; (state, None, None) if none exists.

    An unreadable newer checkpoint is skipped with a warning naming it. accept(meta, path),
    when given, may refuse the one that reads (by raising). Only then, with set_aside, are
    the skipped ones renamed to `<path>.unreadable` (neither resumed from again nor in the
    way of the next save of that step): a refusal renames nothing. Raises
    UnreadableCheckpointError when checkpoints exist but none reads, and also when only
    checkpoints set aside earlier are left (a run whose checkpoints all failed is refused,
    never restarted from step 0).
    """
    found = backend.list_checkpoints(ckpt_dir)
    bad = []
    for _, path in reversed(found):
        try:
            state, meta = backend.restore_checkpoint(path, state)
        except UnreadableCheckpointError as err:
            bad.append((path, err))
            continue
        if accept is not None:
            accept(meta, path)
        if bad:
            if set_aside:
                for old, _ in bad:
                    os.replace(old, _free_name(old + ".unreadable"))
            warnings.warn(f"skipped unreadable checkpoint(s) {'; '.join(f'{p} ({e})' for p, e in bad)}; "
                          f"resuming from {path}", RuntimeWarning, stacklevel=2)
        return state, meta, path
    if bad:
        raise UnreadableCheckpointError(f"no checkpoint in {ckpt_dir} can be read: "
                                        f"{'; '.join(f'{p} ({e})' for p, e in bad)}")
    aside = sorted(n for n in os.listdir(ckpt_dir) if ".unreadable" in n) if os.path.isdir(ckpt_dir) else []
    if aside:
        raise UnreadableCheckpointError(f"no checkpoint in {ckpt_dir} can be read: only the unreadable "
                                        f"{', '.join(aside)} are left; pass --overwrite to start the run afresh")
    return state, None, None


def _free_name(path: str) -> str:
    n, out = 1, path
    while os.path.exists(out):
        n, out = n + 1, f"{path}{n}"
    return out


def _open_run(backend, cfg, mc, resume, overwrite, info, world, lock: RunLock) -> bool:
    """Lock the run folder and prepare it (rank 0); a refusal leaves the folder as it was."""
    created = not os.path.isdir(cfg.out_dir)
    os.makedirs(cfg.out_dir, exist_ok=True)
    try:
        lock.acquire()
        return prepare_run_dir(cfg, backend.name, mc, resume=resume, overwrite=overwrite, data_info=info,
                               world_info=world.describe(), runtime_info=backend.runtime())
    except BaseException:
        lock.release()
        if created and not os.listdir(cfg.out_dir):
            os.rmdir(cfg.out_dir)
        raise


class _NoLogger:
    path = None

    def log(self, step, metrics):
        pass

    def close(self):
        pass


def checkpoint_meta(backend: TrainBackend, cfg: TrainConfig, step: int, world: World) -> dict:
    """The meta every checkpoint carries (what a resume and a loader check it by)."""
    return {"step": step, "data_position": step, "seed": cfg.seed, "backend": backend.name, "rng": backend.rng_rule,
            "config": config_to_dict(cfg), "world": world.describe()}


def run_training(backend: TrainBackend, cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, dataset=None, batch_fn=None, eval_fn=None, noise_fn=None, init_params=None,
                 on_step=None) -> RunResult:
    """Train as `cfg` says with `backend`; returns a RunResult (see meanflow_common.train_cli).

    Everything that can refuse the recipe (the batch, the model, the optimizer, the
    devices) is built before the run folder is touched. Then rank 0 takes the folder's
    lock, checks and writes it, and on resume picks the newest readable checkpoint, which
    every rank restores. Arguments: see `jax_meanflow.train.train`.
    """
    if resume and overwrite:
        raise ValueError("give either resume or overwrite, not both")
    mc = model_config(cfg)
    dataset, batch_fn = _data(cfg, dataset, batch_fn)
    example = batch_fn(dataset, cfg.seed, 0, cfg.batch_size)
    check_batch(cfg, mc, example)
    world = backend.world(cfg)
    if cfg.batch_size % world.devices:
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} (the global batch) does not split evenly over "
                         f"{world.devices} devices")
    model, params = backend.make_model(cfg, example)
    state = backend.create_state(cfg, model, params, init_params)
    step_fn = backend.make_step(cfg, model, world)
    info = get_task(cfg.task).run_info(example)
    run_dir, ckpt_dir = cfg.out_dir, os.path.join(cfg.out_dir, "checkpoints")
    lock = RunLock(run_dir)
    resumed = _on_writer(world, lambda: _open_run(backend, cfg, mc, resume, overwrite, info, world, lock))
    try:
        commit = functools.partial(write_run_config, cfg, backend.name, mc, info, world.describe(),
                                   backend.runtime())
        return _loop(backend, cfg, world, model, state, step_fn, resumed, progress, dataset, batch_fn, eval_fn,
                     noise_fn, on_step, run_dir, ckpt_dir, commit)
    finally:
        lock.release()


def _resume_state(backend, cfg, world, state, ckpt_dir, commit: Callable[[], None]):
    """Rank 0 picks and checks the checkpoint, then commits the run folder (config.json,
    leftovers of interrupted saves removed); every other rank restores the one it picked.
    Any refusal (none readable, another config, fewer steps) comes before the folder changes."""
    kept = {}

    def accept(meta, path):
        check_checkpoint_config(meta, cfg, path)
        check_resume_step(cfg, int(meta.get("step", 0)), path)

    def pick():
        kept["state"], meta, path = restore_newest(backend, ckpt_dir, state, set_aside=True, accept=accept)
        removed = backend.remove_partial(ckpt_dir)
        if removed:
            warnings.warn(f"removed leftovers of interrupted saves: {', '.join(removed)}", RuntimeWarning,
                          stacklevel=3)
        commit()  # the new run length / cadence, now that the resume is accepted
        return path

    path = _on_writer(world, pick)
    if world.writer:
        return kept["state"], path
    if path is None:
        return state, None
    return backend.restore_checkpoint(path, state)[0], path


def _loop(backend, cfg, world, model, state, step_fn, resumed, progress, dataset, batch_fn, eval_fn, noise_fn,
          on_step, run_dir, ckpt_dir, commit) -> RunResult:
    last = None
    if resumed:
        state, last = _resume_state(backend, cfg, world, state, ckpt_dir, commit)
    state = backend.place(state, world)
    start = backend.state_step(state)
    logger = MetricsLogger(run_dir, start if resumed else None, backend.tb_writer(run_dir)) if world.writer \
        else _NoLogger()
    bar = ProgressBar(cfg.steps, start, enabled=progress and world.writer, every=cfg.log_every or 50,
                      batch_size=cfg.batch_size, devices=world.devices, processes=world.processes)
    losses, last_metrics, saved_at = {}, {}, start if last is not None else -1
    t_start = t_log = time.perf_counter()
    cpu_start = time.process_time()
    s_log = start

    def save(k):
        if world.writer or world.collective:
            return backend.save_checkpoint(ckpt_dir, state, checkpoint_meta(backend, cfg, k, world), cfg.keep_last)
        return backend.checkpoint_path(ckpt_dir, k)

    try:
        for s in range(start, cfg.steps):
            k = s + 1
            batch = batch_fn(dataset, cfg.seed, s, cfg.batch_size)
            state, metrics = step_fn(state, s, batch, noise_fn, lambda loss: check_finite(k, loss, last))
            last_metrics = {n: float(v) for n, v in metrics.items()}
            losses[k] = last_metrics["loss"]
            if on_step is not None:
                on_step(k, state, metrics)
            if (cfg.log_every and k % cfg.log_every == 0) or k == cfg.steps:
                now = time.perf_counter()
                rate = (k - s_log) / max(now - t_log, 1e-9)
                logger.log(k, {**last_metrics, "steps_per_s": rate, "samples_per_s": rate * cfg.batch_size,
                               "devices": world.devices, "wall_s": now - t_start,
                               "cpu_s": time.process_time() - cpu_start})
                t_log, s_log = now, k
            bar.update(k, last_metrics["loss"], last_metrics.get("v_loss"))
            if (cfg.ckpt_every and k % cfg.ckpt_every == 0) or k == cfg.steps:
                last, saved_at = save(k), k
            if eval_fn is not None and (world.writer or world.collective) and (
                    (cfg.eval_every and k % cfg.eval_every == 0) or k == cfg.steps):
                eval_fn(state, k, run_dir)
    finally:
        bar.close()
        logger.close()
        if world.writer:
            plot_losses(logger.path, os.path.join(run_dir, "loss.png"),
                        title=f"{cfg.task} {cfg.method} ({backend.name}, {world.devices} device(s))")
    step = backend.state_step(state)
    if saved_at != step:
        last = save(step)
    # every rank returns once rank 0 has written the last checkpoint (and a process group
    # is never torn down under a rank that still writes)
    world.share(None)
    return RunResult(run_dir=run_dir, step=step, losses=losses, checkpoint=last, state=state, model=model,
                     metrics=last_metrics, elapsed_s=time.perf_counter() - t_start)


def load_run(backend: TrainBackend, run_dir: str, checkpoint: Optional[str] = None, use_ema: bool = True) -> LoadedRun:
    """A trained run from its folder: config, model, the state of `checkpoint` (default the
    newest readable one) and a sampler."""
    saved = read_run_config(run_dir)
    if saved.get("backend") != backend.name:
        raise ValueError(f"{run_dir} was written by {saved.get('backend')!r}; load it with that backend, "
                         f"or carry the run over: python -m parity convert-run {run_dir} NEW_RUN_DIR")
    cfg = config_from_dict(saved)
    model, params = backend.make_model(cfg, info=saved.get("data", {}))
    state = backend.create_state(cfg, model, params)
    if checkpoint is not None:
        state, meta = backend.restore_checkpoint(checkpoint, state)
        path = checkpoint
    else:
        state, meta, path = restore_newest(backend, os.path.join(run_dir, "checkpoints"), state)
        if path is None:
            raise FileNotFoundError(f"{run_dir} has no checkpoint")
    check_checkpoint_config(meta, cfg, path)
    return LoadedRun(cfg=cfg, model=model, state=state, step=int(meta["step"]), checkpoint=path,
                     sample=backend.make_sampler(cfg, model, state, use_ema))
