"""Checkpoints of the PyTorch trainer: one state-dict file per checkpoint, written atomically.

`<ckpt_dir>/ckpt_<step:08d>.pt` holds {"model": model state dict, "ema": EMA state dict,
"optimizer", "scheduler", "step", "meta"} (meta: data position, seed, RNG rule, config).
Each file is written to a temporary name in the same folder and renamed with
`os.replace`, so an interrupted save never leaves a partial file under a checkpoint name;
only the newest `keep_last` files are kept.

The same functions exist in `jax_meanflow.checkpoint`:
`save_checkpoint(ckpt_dir, state, meta, keep_last) -> path`, `list_checkpoints(ckpt_dir)
-> [(step, path)]`, `latest_checkpoint(ckpt_dir) -> path | None`, `restore_checkpoint(path,
state) -> (state, meta)` (UnreadableCheckpointError for a file that cannot be read) and
`remove_partial(ckpt_dir)` (deletes the `.ckpt_*.part` files of interrupted saves).
The "model" entry is what `parity.convert.checkpoints` reads, so any checkpoint converts to JAX.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from typing import Optional

import torch

from meanflow_common.checks import (UnreadableCheckpointError, check_float_arrays, check_free_space,
                                    checkpoint_write_error, unreadable_checkpoint)
from meanflow_common.keys import check_keys_and_shapes
from torch_meanflow.train_state import TrainState

__all__ = ["save_checkpoint", "latest_checkpoint", "restore_checkpoint", "list_checkpoints", "remove_partial"]

_NAME = re.compile(r"ckpt_(\d{8})\.pt\Z")
_PART = re.compile(r"\.ckpt_.*\.part\Z")


def remove_partial(ckpt_dir: str) -> list[str]:
    """Delete the temporary files (`.ckpt_*.part`) interrupted saves left; returns them."""
    if not os.path.isdir(ckpt_dir):
        return []
    gone = [os.path.join(ckpt_dir, n) for n in sorted(os.listdir(ckpt_dir)) if _PART.match(n)]
    for path in gone:
        os.remove(path)
    return gone


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """[(step, path)] of the complete checkpoint files in `ckpt_dir`, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = [(int(m.group(1)), os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir) if (m := _NAME.match(n))]
    return sorted(found)


def _all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def save_checkpoint(ckpt_dir: str, state: TrainState, meta: dict, keep_last: int) -> str:
    """Write `state` (at step `state.step`) and `meta`; returns the file's path.

    Non-finite parameters are refused (FloatingPointError), so a diverged state can
    never replace the last good checkpoint. Older files beyond `keep_last` are deleted
    after the new one is in place. A failed write (disk full, ...) is a
    CheckpointWriteError naming the file and the cause; the temporary file is removed and
    the older checkpoints are untouched.
    """
    if not (_all_finite(state.model) and _all_finite(state.ema_model)):
        raise FloatingPointError(f"parameters are not finite at step {state.step}; checkpoint not written")
    os.makedirs(ckpt_dir, exist_ok=True)
    remove_partial(ckpt_dir)  # one writer per run folder (its lock): no save of ours is in flight
    path = os.path.join(ckpt_dir, f"ckpt_{state.step:08d}.pt")
    payload = {
        "model": state.model.state_dict(),
        "ema": state.ema_model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "step": int(state.step),
        "meta": meta,
    }
    check_free_space(path, _nbytes(payload))
    fd, tmp = tempfile.mkstemp(dir=ckpt_dir, prefix=".ckpt_", suffix=".part")
    try:
        # through a Python file object: a full disk then surfaces as OSError(ENOSPC), where
        # torch.save(payload, name) says only "inline_container.cc ... unexpected pos"
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        raise checkpoint_write_error(path, err) from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    for _, old in list_checkpoints(ckpt_dir)[:-keep_last]:
        os.remove(old)
    return path


def _nbytes(obj) -> int:
    """Bytes of the tensors in a (nested) state dict: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The newest complete checkpoint file in `ckpt_dir`, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def _check_state_dict(saved: dict, module: torch.nn.Module, what: str) -> None:
    want = module.state_dict()
    check_keys_and_shapes({k: tuple(v.shape) for k, v in saved.items()},
                          {k: tuple(v.shape) for k, v in want.items()}, f"checkpoint {what}",
                          "; it was written for another architecture")
    check_float_arrays({k: v for k, v in saved.items() if want[k].is_floating_point()}, f"checkpoint {what}")


def restore_checkpoint(path: str, state: TrainState) -> tuple[TrainState, dict]:
    """Load the file `path` into `state` in place (model, EMA, optimizer, scheduler, step).

    Every key and shape is compared with the state's model first: a checkpoint of
    another architecture or size raises KeyError / ValueError naming the parameter.
    Returns (state, meta).
    """
    if os.path.isdir(path):
        raise UnreadableCheckpointError(f"{path} is a folder, not a checkpoint file of the PyTorch trainer (a JAX "
                                        "checkpoint? convert it with `python -m parity convert`, or its whole run "
                                        "with `python -m parity convert-run`)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    device = next(state.model.parameters()).device
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated/garbage files fail in many ways
        raise unreadable_checkpoint(path, err) from err
    if not isinstance(payload, dict) or not {"model", "ema", "optimizer", "step"} <= set(payload):
        raise UnreadableCheckpointError(f"{path} is not a checkpoint of the PyTorch trainer (it lacks model, ema, "
                                        "optimizer or step); a run of the JAX trainer carries over with "
                                        "`python -m parity convert-run SRC_RUN DST_RUN`")
    _check_state_dict(payload["model"], state.model, "model")
    _check_state_dict(payload["ema"], state.ema_model, "ema")
    state.model.load_state_dict(payload["model"])
    state.ema_model.load_state_dict(payload["ema"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    return state, dict(payload.get("meta", {}))
