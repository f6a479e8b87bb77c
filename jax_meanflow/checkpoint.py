"""Checkpoints of the JAX trainer through orbax's CheckpointManager.

Layout of `<ckpt_dir>/<step>/`, one orbax item each: `params` and `ema_params` (plain Flax
parameter trees, directly convertible), `opt_state` ({"step", "opt_state"}) and `meta`
(JSON: step, data position, seed, RNG rule, config). Orbax writes each step into a
temporary folder and renames it when complete, so an interrupted save never replaces a
good checkpoint; the manager keeps the last `keep_last`.

The same three functions exist in `torch_meanflow.checkpoint`:
`save_checkpoint(ckpt_dir, state, meta, keep_last) -> path`,
`latest_checkpoint(ckpt_dir) -> path | None`, `restore_checkpoint(path, state) -> (state, meta)`.
The parameters convert to PyTorch with `parity.convert.checkpoints` (path
`<ckpt_dir>/<step>/params` or `<ckpt_dir>/<step>/ema_params`).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jax_meanflow.train_state import TrainState
from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.checks import check_float_arrays, unreadable_checkpoint

__all__ = ["save_checkpoint", "latest_checkpoint", "restore_checkpoint", "state_tree"]


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
    return all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree_util.tree_leaves(tree))


def save_checkpoint(ckpt_dir: str, state: TrainState, meta: dict, keep_last: int) -> str:
    """Write `state` at step `state.step` (with the JSON `meta`); returns its folder.

    Non-finite parameters are refused (FloatingPointError), so a diverged state can
    never replace the last good checkpoint.
    """
    if not _all_finite((state.params, state.ema_params)):
        raise FloatingPointError(f"parameters are not finite at step {int(state.step)}; checkpoint not written")
    ckpt_dir = os.path.abspath(ckpt_dir)
    mgr = _manager(ckpt_dir, keep_last)
    step = int(state.step)
    items = {k: ocp.args.StandardSave(v) for k, v in state_tree(state).items()}
    args = ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta))
    mgr.save(step, args=args, force=True)
    mgr.wait_until_finished()
    mgr.close()
    return os.path.join(ckpt_dir, str(step))


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """The folder of the newest complete checkpoint in `ckpt_dir`, or None."""
    if not os.path.isdir(ckpt_dir):
        return None
    steps = ocp.utils.checkpoint_steps(os.path.abspath(ckpt_dir))  # complete (renamed) steps only
    return os.path.join(os.path.abspath(ckpt_dir), str(max(steps))) if steps else None


def restore_checkpoint(path: str, state: TrainState) -> tuple[TrainState, dict]:
    """Read the checkpoint folder `path` into the structure of `state` (a template).

    Every parameter key and shape is compared with the template first: a checkpoint of
    another architecture or size raises KeyError / ValueError naming the parameter.
    """
    path = os.path.abspath(path)
    if not all(os.path.isdir(os.path.join(path, k)) for k in _ITEMS + ("meta",)):
        raise FileNotFoundError(f"{path} is not a checkpoint of the JAX trainer (needs {', '.join(_ITEMS)}, meta)")
    template = state_tree(state)
    tree = {}
    for item in _ITEMS:
        folder = os.path.join(path, item)
        _check_item_files(folder)
        try:
            saved = ocp.StandardCheckpointer().metadata(folder).item_metadata if item != "opt_state" else None
        except (OSError, KeyError, ValueError) as err:
            raise unreadable_checkpoint(folder, err) from err
        if saved is not None:
            _check_against(saved, template[item], item)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template[item])
        try:
            tree[item] = ocp.StandardCheckpointer().restore(folder, abstract)
        except (OSError, KeyError, ValueError) as err:
            raise unreadable_checkpoint(folder, err) from err
    try:
        meta = dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(os.path.join(path, "meta")))
    except (OSError, ValueError) as err:
        raise unreadable_checkpoint(os.path.join(path, "meta"), err) from err
    new = TrainState(step=tree["opt_state"]["step"], params=tree["params"], ema_params=tree["ema_params"],
                     opt_state=tree["opt_state"]["opt_state"])
    return new, meta


def _check_item_files(folder: str) -> None:
    """The files orbax reads an item's tree from: without them it finds an empty tree, which
    would read as a checkpoint of another architecture."""
    missing = [n for n in ("_METADATA", "manifest.ocdbt") if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{folder} is an incomplete checkpoint item: {', '.join(missing)} missing "
                                "(deleted or never written)")


def _check_against(saved: Any, template: Any, part: str) -> None:
    check_keys_and_shapes(_flat_shapes(saved), _flat_shapes(template), f"checkpoint {part}",
                          "; it was written for another architecture")
    leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    check_float_arrays([(jax.tree_util.keystr(p), leaf) for p, leaf in leaves if hasattr(leaf, "dtype")],
                       f"checkpoint {part}")
