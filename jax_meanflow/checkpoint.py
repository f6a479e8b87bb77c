"""Checkpoints of the JAX trainer through orbax's CheckpointManager.

Layout of `<ckpt_dir>/<step>/`, one orbax item each: `params` and `ema_params` (plain Flax
parameter trees, directly convertible), `opt_state` ({"step", "opt_state"}) and `meta`
(JSON: step, data position, seed, RNG rule, config). Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never replaces a
good checkpoint; the manager keeps the last `keep_last`.

The same functions exist in `torch_meanflow.checkpoint`:
`save_checkpoint(ckpt_dir, state, meta, keep_last) -> path`, `list_checkpoints(ckpt_dir)
-> [(step, path)]`, `latest_checkpoint(ckpt_dir) -> path | None`, `restore_checkpoint(path,
state) -> (state, meta)` (UnreadableCheckpointError for a folder that cannot be read) and
`remove_partial(ckpt_dir)` (deletes the temporary folders of interrupted saves).

Every JAX checkpoint read (resume, `load_run` and the evaluators, `parity convert`,
`parity --checkpoint`, `parity debug`) goes through `read_item`: it restores onto the
devices of this process (a template's shardings, or host NumPy arrays), whatever device
count wrote the checkpoint, with orbax's log lines silenced; a damaged item is an
UnreadableCheckpointError, a device/sharding mismatch a CheckpointDeviceError (the files
are fine).
The parameters convert to PyTorch with `parity.convert.checkpoints` (path
`<ckpt_dir>/<step>/params` or `<ckpt_dir>/<step>/ema_params`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_meanflow.parallel import host_value
from jax_meanflow.train_state import TrainState
from meanflow_common.checks import (UnreadableCheckpointError, check_float_arrays, check_free_space,
                                    checkpoint_write_error, unreadable_checkpoint)
from meanflow_common.keys import check_keys_and_shapes

__all__ = ["save_checkpoint", "list_checkpoints", "latest_checkpoint", "restore_checkpoint", "remove_partial",
           "state_tree", "read_item", "CheckpointDeviceError"]

_TMP = ".orbax-checkpoint-tmp"


def _manager(ckpt_dir: str, keep_last: Optional[int]) -> ocp.CheckpointManager:
    # A fresh manager per save: it reads the steps on disk, so a folder emptied by an
    # overwrite (or written by another process) is never seen through a stale cache.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep_last, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(ckpt_dir, options=options)


_ITEMS = ("params", "ema_params", "opt_state")


def state_tree(state: TrainState) -> dict:
    """The TrainState as the items that are saved: {"params", "ema_params", "opt_state"}."""
    return {"params": state.params, "ema_params": state.ema_params,
            "opt_state": {"step": state.step, "opt_state": state.opt_state}}


def _flat_shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", np.shape(leaf))) for path, leaf in leaves}


def _all_finite(tree) -> bool:
    return all(bool(np.isfinite(host_value(leaf)).all()) for leaf in jax.tree_util.tree_leaves(tree))


def save_checkpoint(ckpt_dir: str, state: TrainState, meta: dict, keep_last: int) -> str:
    """Write `state` at step `state.step` (with the JSON `meta`); returns its folder.

    With several JAX processes every process calls it (orbax coordinates them).

    Non-finite parameters are refused (FloatingPointError), so a diverged state can
    never replace the last good checkpoint. A failed write (disk full, ...) is a
    CheckpointWriteError naming the step folder and the cause; the unfinished temporary
    folder is removed and the older checkpoints are untouched.
    """
    if not _all_finite((state.params, state.ema_params)):
        raise FloatingPointError(f"parameters are not finite at step {int(host_value(state.step))}; "
                                 "checkpoint not written")
    ckpt_dir = os.path.abspath(ckpt_dir)
    if jax.process_index() == 0:  # with several processes, the others may already be saving
        remove_partial(ckpt_dir)
    step = int(host_value(state.step))
    path = os.path.join(ckpt_dir, str(step))
    tree = state_tree(state)
    check_free_space(path, sum(int(getattr(a, "nbytes", 0)) for a in jax.tree_util.tree_leaves(tree)))
    items = {k: ocp.args.StandardSave(v) for k, v in tree.items()}
    args = ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta))
    try:
        with _quiet():  # orbax logs a failed write with its traceback; the error below says it once
            mgr = _manager(ckpt_dir, keep_last)
            try:
                mgr.save(step, args=args, force=True)
                mgr.wait_until_finished()
            finally:
                mgr.close()
    except Exception as err:  # noqa: BLE001 - tensorstore reports a full disk as ValueError, OSError, ...
        if jax.process_index() == 0:
            remove_partial(ckpt_dir)  # the unfinished temporary folder: no partial checkpoint stays
        raise checkpoint_write_error(path, err) from err
    return path


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """[(step, folder)] of the complete checkpoints in `ckpt_dir`, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    root = os.path.abspath(ckpt_dir)
    steps = ocp.utils.checkpoint_steps(root)  # complete (renamed) steps only
    return [(int(s), os.path.join(root, str(s))) for s in sorted(steps)]


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The folder of the newest complete checkpoint in `ckpt_dir`, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def remove_partial(ckpt_dir: str) -> list[str]:
    """Delete the temporary folders an interrupted save left in `ckpt_dir`; returns them."""
    if not os.path.isdir(ckpt_dir):
        return []
    gone = [os.path.join(ckpt_dir, n) for n in sorted(os.listdir(ckpt_dir)) if _TMP in n]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def restore_checkpoint(path: str, state: TrainState) -> tuple[TrainState, dict]:
    """Read the checkpoint folder `path` into the structure of `state` (a template).

    Every parameter key and shape is compared with the template first: a checkpoint of
    another architecture or size raises KeyError / ValueError naming the parameter.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        raise UnreadableCheckpointError(f"{path} is a file, not a checkpoint folder of the JAX trainer (a PyTorch "
                                        "checkpoint? convert it with `python -m parity convert`, or its whole run "
                                        "with `python -m parity convert-run`)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    lacking = [k for k in _ITEMS + ("meta",) if not os.path.isdir(os.path.join(path, k))]
    if lacking:
        raise UnreadableCheckpointError(f"{path} is not a readable checkpoint of the JAX trainer: it lacks "
                                        f"{', '.join(lacking)} (it needs {', '.join(_ITEMS)}, meta)")
    template = state_tree(state)
    tree = {}
    for item in _ITEMS:
        folder = os.path.join(path, item)
        if item != "opt_state":
            _check_against(_item_metadata(folder), template[item], item)
        tree[item] = read_item(folder, template[item])
    meta_dir = os.path.join(path, "meta")
    meta = dict(_read(meta_dir, lambda: ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(meta_dir)))
    new = TrainState(step=tree["opt_state"]["step"], params=tree["params"], ema_params=tree["ema_params"],
                     opt_state=tree["opt_state"]["opt_state"])
    return new, meta


class CheckpointDeviceError(ValueError):
    """An intact checkpoint that orbax cannot place on this process's devices."""


@contextlib.contextmanager
def _quiet():
    """orbax logs a failed or cross-device restore on the root logger (ERROR:root ...) and
    absl (WARNING:absl: ...) before raising or recovering: the caller reports it once."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


_DEVICE_WORDS = ("sharding", "device")


def _read(folder: str, fn):
    # orbax/tensorstore report a damaged folder with assorted exception types; the shape
    # and key checks against the model stay outside, so they keep their own errors. A
    # sharding or device complaint is not damage: the files were read, the placement failed.
    try:
        with _quiet():
            return fn()
    except Exception as err:  # noqa: BLE001 - reraised with the folder named
        first = (str(err).strip().splitlines() or [""])[0]
        if any(w in first.lower() for w in _DEVICE_WORDS) and os.path.isfile(os.path.join(folder, "_METADATA")):
            raise CheckpointDeviceError(
                f"{folder} could not be restored onto the {jax.local_device_count()} {jax.default_backend()} "
                f"device(s) of this process ({type(err).__name__}: {first[:200]}); the checkpoint was written on "
                "other devices and is not damaged") from err
        raise unreadable_checkpoint(folder, err) from err


def _item_metadata(folder: str):
    """The tree of ArrayMetadata orbax recorded for the item (shapes, dtypes, shardings)."""
    folder = os.path.abspath(folder)
    _check_item_files(folder)
    saved = _read(folder, lambda: ocp.PyTreeCheckpointer().metadata(folder).item_metadata)
    saved = getattr(saved, "tree", saved)
    if not saved:  # orbax answers None, not an error, when the tree's metadata is damaged or gone
        raise UnreadableCheckpointError(f"{folder} is not a readable checkpoint item: its tree metadata "
                                        "is missing or damaged")
    return saved


def read_item(folder: str, template: Any = None) -> Any:
    """The tree of the orbax item `folder`, restored onto this process's devices.

    template: a tree of arrays (or ShapeDtypeStructs) whose structure, dtypes and
    shardings the result takes; None: every array leaf as a host NumPy array, in the dtype
    it was saved in (no device is involved, so float64 stays float64 without x64). Restore
    arguments are always given explicitly: without them orbax places each array on the
    devices recorded at save time, which a checkpoint of a 2-device run does not find on a
    1-device machine.
    """
    folder = os.path.abspath(folder)
    if template is not None:
        _check_item_files(folder)
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def abstract(leaf):
            sharding = getattr(leaf, "sharding", None)
            return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype,
                                        sharding=sharding if isinstance(sharding, jax.sharding.Sharding) else local)

        target = jax.tree.map(abstract, template)
        return _read(folder, lambda: ocp.StandardCheckpointer().restore(folder, target))
    ckptr = ocp.PyTreeCheckpointer()
    saved = _item_metadata(folder)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    return _read(folder, lambda: ckptr.restore(folder, args=ocp.args.PyTreeRestore(restore_args=restore_args)))


def _check_item_files(folder: str) -> None:
    """The files orbax reads an item's tree from: without them it finds an empty tree, which
    would read as a checkpoint of another architecture."""
    missing = [n for n in ("_METADATA", "manifest.ocdbt") if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise UnreadableCheckpointError(f"{folder} is an incomplete checkpoint item: {', '.join(missing)} missing "
                                        "(deleted or never written)")


def _check_against(saved: Any, template: Any, part: str) -> None:
    check_keys_and_shapes(_flat_shapes(saved), _flat_shapes(template), f"checkpoint {part}",
                          "; it was written for another architecture")
    leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    check_float_arrays([(jax.tree_util.keystr(p), leaf) for p, leaf in leaves if hasattr(leaf, "dtype")],
                       f"checkpoint {part}")
