"""Checkpoint files on both sides, and conversion between them.

- JAX: an orbax checkpoint directory holding the Flax params tree (the official layout,
  optionally under "params" / "net" / "ema_params" keys).
- PyTorch: a state dict file (`.pt`, torch.save) or a `.safetensors` file.

`load_params` reads any of them into a JAX-layout numpy tree, checked against the
architecture's table and a fresh init of the named preset: a checkpoint of another
architecture or size is an error naming the offending key, a non-float array is refused, an
unreadable file is named as such, and a recorded config (a trainer checkpoint's meta, the
metadata of a `.safetensors` file written here) must equal the config it is loaded as
(`meanflow_common.config_compare`). Writers never overwrite an existing file unless asked
(`overwrite=True`), and write through a temporary name.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import tempfile

import numpy as np
from safetensors import SafetensorError

from meanflow_common.checks import check_finite_arrays, check_float_arrays, nonfinite_arrays, unreadable_checkpoint
from meanflow_common.config_compare import MODEL_CONFIG_KEY, check_model_config, recorded_model_config
from parity import convert

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _pick_params(tree: dict, key: str | None) -> dict:
    """Descend into wrappers that training states add around the params tree."""
    if key:
        if key not in tree:
            raise KeyError(f"checkpoint has no {key!r} entry; top-level keys: {sorted(tree)}")
        tree = tree[key]
    for wrapper in ("params", "net"):
        while isinstance(tree, dict) and set(tree) == {wrapper}:
            tree = tree[wrapper]
    if isinstance(tree, dict) and "params" in tree and isinstance(tree["params"], dict):
        tree = tree["params"]
        if set(tree) == {"net"}:
            tree = tree["net"]
    return tree


def read_torch_file(path: str, key: str | None = None) -> dict[str, np.ndarray]:
    """A state dict from a .safetensors or torch.save file; `key` picks an entry of a training
    checkpoint (e.g. "ema"), else its "model" entry when there is one."""
    return _read_torch(path, key)[0]


def _read_torch(path: str, key: str | None) -> tuple[dict[str, np.ndarray], dict | None]:
    """(state dict, recorded model config or None) of a .safetensors or torch.save file."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.numpy import load_file

            with safe_open(path, framework="np") as f:
                recorded = recorded_model_config((f.metadata() or {}).get(MODEL_CONFIG_KEY))
            return dict(load_file(path)), recorded
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, KeyError, TypeError, AttributeError, ImportError,
            pickle.UnpicklingError, SafetensorError) as err:
        raise unreadable_checkpoint(path, err) from err
    meta = obj.get("meta") if isinstance(obj, dict) and isinstance(obj.get("meta"), dict) else None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(f"{path}: no {key!r} entry (found {found})")
        obj = obj[key]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    sd = {k: v.detach().cpu().numpy() if v.dtype != torch.bfloat16 else v.detach().float().cpu().numpy()
          for k, v in obj.items() if hasattr(v, "detach")}
    if not sd:
        raise ValueError(f"{path}: the state dict holds no tensor (entries: {sorted(obj)[:8]})")
    return sd, recorded_model_config(meta)


def read_orbax(path: str) -> dict:
    """The tree of an orbax checkpoint directory; an incomplete or unreadable one is an error
    naming the directory (and the missing file, when that is what is wrong)."""
    from jax_meanflow.checkpoint import read_item  # the one JAX checkpoint reader: any device count

    _check_orbax_dir(path)
    return _to_numpy_tree(read_item(path))


def _check_orbax_dir(path: str) -> None:
    """An OCDBT-format orbax item needs its `manifest.ocdbt` and its `_METADATA`: without them
    orbax sees no (or an empty) tree, which later reads as a checkpoint of another model."""
    names = set(os.listdir(path))
    ocdbt = any(n.startswith("ocdbt.process_") for n in names)
    missing = [n for n in ("manifest.ocdbt", "_METADATA") if ocdbt and n not in names]
    if missing:
        raise FileNotFoundError(f"{path} is an incomplete orbax checkpoint: {', '.join(missing)} missing "
                                "(the file orbax reads the parameter tree from)")


def _recorded_orbax_config(path: str) -> dict | None:
    """The model config recorded beside an orbax params item of the JAX trainer
    (`<step>/params` with `<step>/meta/metadata`, the checkpoint's meta as JSON)."""
    meta_file = os.path.join(os.path.dirname(os.path.abspath(path)), "meta", "metadata")
    if not os.path.isfile(meta_file):
        return None
    try:
        with open(meta_file) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise unreadable_checkpoint(meta_file, err) from err
    return recorded_model_config(meta)


def _to_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def _arch(arch):
    """The Arch (an object: this layer knows no registry)."""
    if isinstance(arch, str) or not hasattr(arch, "torch_build"):
        raise TypeError(f"an Arch object is needed, got {arch!r}; look a name up with parity.get_arch({arch!r})")
    return arch


def torch_template(arch, model_cfg) -> dict:
    """{state-dict name: shape} of the torch model of `model_cfg` (`arch`: an Arch), built on
    the meta device (no memory is allocated, so this is cheap for DiT-XL as for the tiny
    presets)."""
    import torch

    with torch.device("meta"):
        module = _arch(arch).torch_build(model_cfg)
    return {k: tuple(p.shape) for k, p in module.named_parameters()}


def load_params(path: str, arch, model_cfg, key: str | None = None, allow_nonfinite: bool = False) -> dict:
    """Any checkpoint -> JAX-layout numpy params tree, validated against `model_cfg` of
    `arch` (an Arch).

    `path`: an orbax params directory, a JAX trainer step folder (its `params`, or the item
    `key` names, e.g. "ema_params"), or a .pt/.safetensors file (`key`: its entry, e.g. "ema").

    Both directions are checked against the torch model's parameter shapes: the table is a
    bijection, so a tree that converts onto exactly those keys and shapes fits the JAX model.
    NaN or inf weights are refused (ValueError naming the file and parameters) unless
    `allow_nonfinite`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return _load_params(path, _arch(arch), model_cfg, key, allow_nonfinite)
    except (convert.ConversionError, convert.ConversionShapeError) as err:  # name the file and what to check
        raise type(err)(f"checkpoint {path} does not fit {arch.name} {type(model_cfg).__name__} "
                        f"(a checkpoint of another architecture or size? check --arch, --preset, --set): {err}") from None


def _load_params(path: str, arch, model_cfg, key: str | None, allow_nonfinite: bool) -> dict:
    tmpl = torch_template(arch, model_cfg)
    if all(os.path.isdir(os.path.join(path, k)) for k in ("params", "ema_params", "meta")):
        path, key = os.path.join(path, key or "params"), None  # a JAX trainer step: its params item
        if not os.path.isdir(path):
            raise KeyError(f"{os.path.dirname(path)} has no {os.path.basename(path)!r} item; use params or ema_params")
    if os.path.isfile(path) and path.endswith(TORCH_SUFFIXES):
        sd, recorded = _read_torch(path, key)
        check_float_arrays(sd, path)
        check_model_config(recorded, model_cfg, path)
        tree = convert.torch_to_jax(sd, arch.table, model_cfg)
    elif os.path.isdir(path):
        tree = _pick_params(read_orbax(path), key)
        check_float_arrays(convert.flatten_tree(tree), path)
        check_model_config(_recorded_orbax_config(path), model_cfg, path)
    else:
        raise ValueError(f"{path}: not an orbax directory nor a torch file ({', '.join(TORCH_SUFFIXES)})")
    convert.jax_to_torch(tree, arch.table, model_cfg, template=tmpl)  # every key and shape checked
    if not allow_nonfinite:
        check_finite_arrays(convert.flatten_tree(tree), f"checkpoint {path}",
                            "these weights make both sides non-finite, so no parity check can judge them "
                            "(convert: --allow-nonfinite writes them anyway)")
    return tree


def _check_target(path: str, overwrite: bool):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite)")


def save_torch_file(state_dict: dict, path: str, overwrite: bool = False, model_cfg=None):
    """Write a state dict (.safetensors, else torch.save). A `.safetensors` file records
    `model_cfg` in its metadata, so loading it under another config is refused."""
    _check_target(path, overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    os.close(fd)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        meta = {MODEL_CONFIG_KEY: json.dumps(dataclasses.asdict(model_cfg))} if model_cfg is not None else None
        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp, metadata=meta)
    else:
        import torch

        from parity.convert.arrays import as_torch

        torch.save({k: as_torch(v) for k, v in state_dict.items()}, tmp)
    os.replace(tmp, path)


def save_orbax(tree: dict, path: str, overwrite: bool = False):
    """Write the Flax params tree (without a "params" key) as an orbax checkpoint holding
    {"params": tree}, the layout of the official checkpoints; `load_params` (and `convert`,
    `--checkpoint`) read it back as the bare tree, as they read a bare tree saved by
    `ocp.PyTreeCheckpointer().save(path, tree)`: orbax's own restore gives {"params": tree}."""
    import orbax.checkpoint as ocp

    _check_target(path, overwrite)
    path = os.path.abspath(path)
    tmp = path + ".part"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    ocp.PyTreeCheckpointer().save(tmp, {"params": tree})
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def convert_file(src: str, dst: str, arch, model_cfg, key: str | None = None, overwrite: bool = False,
                 allow_nonfinite: bool = False) -> list[str]:
    """Convert a checkpoint of `arch` (an Arch) between the two sides; the direction follows
    the file kinds: `dst` a .pt/.pth/.bin/.safetensors file, or an orbax folder (a name
    without a suffix; another suffix is refused). Non-finite weights are refused unless
    `allow_nonfinite`; returns the parameters holding them (written as they are)."""
    arch = _arch(arch)
    suffix = os.path.splitext(os.path.basename(os.path.normpath(dst)))[1]
    if suffix and not dst.endswith(TORCH_SUFFIXES):
        raise ValueError(f"{dst}: unknown suffix {suffix!r}; write a torch file ({', '.join(TORCH_SUFFIXES)}) or an "
                         "orbax folder (a name without a suffix)")
    params = load_params(src, arch, model_cfg, key=key, allow_nonfinite=allow_nonfinite)
    bad = nonfinite_arrays(convert.flatten_tree(params)) if allow_nonfinite else []
    if dst.endswith(TORCH_SUFFIXES):
        save_torch_file(convert.jax_to_torch(params, arch.table, model_cfg), dst, overwrite, model_cfg=model_cfg)
    else:
        save_orbax(params, dst, overwrite)
    return bad
