"""Data parallelism of the PyTorch trainer under torchrun, with the gradient sync by hand.

Twin of `jax_meanflow.parallel`. `torchrun --nproc-per-node N -m torch_meanflow.train ...`
starts N processes (gloo on CPU, nccl on CUDA, one GPU per process). The model is NOT
wrapped in DistributedDataParallel: `torch.func.jvp` cannot run through the DDP wrapper,
and running it on the inner module skips DDP's gradient all-reduce without an error. So
`sync_gradients` all-reduces the gradients explicitly (one flat buffer per dtype, mean over
ranks) between backward and the clip/optimizer step, and `check_in_sync` verifies, for the
first `TrainConfig.sync_check_steps` updates, that every rank holds the same gradients and
parameters: a (sum, sum of squares) checksum per tensor, all-gathered (2 numbers per
tensor and rank, not the tensors).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from meanflow_common.launch_env import TORCHRUN_VARS, read_launch
from meanflow_common.train_loop import World

__all__ = ["check_launch_env", "init_world", "share", "sync_gradients", "mean_over_ranks", "broadcast_module", "checksums",
           "check_in_sync", "finish"]


def _started_by_torchrun() -> bool:
    # a partial set of torchrun's variables (RANK without WORLD_SIZE, ...) is an error
    # naming the missing one, never a silent single process
    launch = read_launch(TORCHRUN_VARS)
    return launch is not None and launch.count > 1


def check_launch_env() -> None:
    """LaunchEnvError naming the variable when torchrun's MASTER_ADDR, MASTER_PORT,
    WORLD_SIZE and RANK are set in part or out of range (checked before anything starts)."""
    read_launch(TORCHRUN_VARS)


def init_world(devices: int) -> World:
    """The World of this process; starts the process group when torchrun launched several.

    devices (TrainConfig.devices) must be 0, 1 or the number of processes: the process
    count is torchrun's (--nproc-per-node, --nnodes), one device per process.
    """
    if not (_started_by_torchrun() or dist.is_initialized()):
        if devices not in (0, 1):
            raise ValueError(f"TrainConfig.devices={devices}: the PyTorch trainer runs one device per process; "
                             f"launch it with torchrun --nproc-per-node {devices} -m torch_meanflow.train ...")
        return World()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    n, rank = dist.get_world_size(), dist.get_rank()
    if devices not in (0, 1, n):
        raise ValueError(f"TrainConfig.devices={devices} but torchrun started {n} processes (one device each); "
                         f"set devices=0 or {n}, or launch {devices} processes")
    return World(processes=n, rank=rank, devices=n, share=share)


def finish(ok: bool = True) -> None:
    """Close the process group, if one runs, after every rank got here (ok: this rank
    ended normally). After a failure it is left to the process exit: a rank that fails
    alone would wait forever for the others in the barrier or in the group's teardown."""
    if dist.is_initialized() and ok:
        dist.barrier()
        dist.destroy_process_group()


def share(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled; a collective)."""
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _by_dtype(tensors: Sequence[torch.Tensor]) -> dict:
    groups: dict = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


def sync_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace every parameter's gradient by its mean over the ranks, in place.

    A parameter without a gradient gets zeros first, so every rank reduces the same list.
    """
    n = dist.get_world_size()
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    for group in _by_dtype(grads).values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= n
        offset = 0
        for g in group:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over the ranks."""
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def checksums(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[len(tensors), 2] float64: (sum, sum of squares) of each tensor."""
    rows = [torch.stack([t.double().sum(), t.double().pow(2).sum()]) for t in tensors]
    return torch.stack(rows) if rows else torch.zeros((0, 2), dtype=torch.float64)


def check_in_sync(model: torch.nn.Module, step: int, ema_model: Optional[torch.nn.Module] = None) -> None:
    """RuntimeError on every rank, naming the tensor and ranks, when some rank's gradients,
    parameters (or EMA parameters) differ from rank 0's after update `step`."""
    named = [(f"grad of {n}", p.grad) for n, p in model.named_parameters() if p.grad is not None]
    named += [(n, p) for n, p in model.named_parameters()]
    if ema_model is not None:
        named += [(f"EMA {n}", p) for n, p in ema_model.named_parameters()]
    local = checksums([t for _, t in named])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    ref = gathered[0]
    scale = ref.abs().amax(dim=0, keepdim=True) if ref.numel() else ref
    for rank, got in enumerate(gathered[1:], start=1):
        # identical inputs and one all-reduced gradient give identical bits; the tolerance
        # only absorbs a reduction that is not bit-reproducible across ranks
        bad = ((got - ref).abs() > 1e-9 * ref.abs() + 1e-12 * scale).any(dim=1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise RuntimeError(
                f"after update {step} rank {rank} differs from rank 0 in {named[i][0]} (checksum "
                f"{got[i].tolist()} vs {ref[i].tolist()}): the gradients were not synchronised across ranks")

