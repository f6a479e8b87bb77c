"""Checkpoint files on both sides, and conversion between them.

- JAX: an orbax checkpoint directory holding the Flax params tree (the official layout,
  optionally under "params" / "net" / "ema_params" keys).
- PyTorch: a state dict file (`.pt`, torch.save) or a `.safetensors` file.

`load_params` reads any of them into a JAX-layout numpy tree, checked against the
architecture's table and a fresh init of the named preset: a checkpoint of another
architecture or size is an error naming the offending key. Writers never overwrite an
existing file unless asked (`overwrite=True`), and write through a temporary name.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from parity import convert

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


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
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise KeyError(f"{path}: no {key!r} entry (found {found})")
        obj = obj[key]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def read_orbax(path: str) -> dict:
    import orbax.checkpoint as ocp

    restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
    return _to_numpy_tree(restored)


def _to_numpy_tree(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def _arch(arch):
    """An Arch, or the registered one of that name."""
    from parity.core.arch import get_arch

    return get_arch(arch)


def torch_template(arch, model_cfg) -> dict:
    """{state-dict name: shape} of the torch model of `model_cfg` (`arch`: an Arch or a
    registered name), built on the meta device (no memory is allocated, so this is cheap for
    DiT-XL as for the tiny presets)."""
    import torch

    with torch.device("meta"):
        module = _arch(arch).torch_build(model_cfg)
    return {k: tuple(p.shape) for k, p in module.named_parameters()}


def load_params(path: str, arch, model_cfg, key: str | None = None) -> dict:
    """Any checkpoint -> JAX-layout numpy params tree, validated against `model_cfg` of
    `arch` (an Arch or a registered name).

    Both directions are checked against the torch model's parameter shapes: the table is a
    bijection, so a tree that converts onto exactly those keys and shapes fits the JAX model.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    arch = _arch(arch)
    tmpl = torch_template(arch, model_cfg)
    if os.path.isfile(path) and path.endswith(_TORCH_SUFFIXES):
        sd = read_torch_file(path, key)
        tree = convert.torch_to_jax(sd, arch.table, model_cfg)
    elif os.path.isdir(path):
        tree = _pick_params(read_orbax(path), key)
    else:
        raise ValueError(f"{path}: not an orbax directory nor a torch file ({', '.join(_TORCH_SUFFIXES)})")
    convert.jax_to_torch(tree, arch.table, model_cfg, template=tmpl)  # every key and shape checked
    return tree


def _check_target(path: str, overwrite: bool):
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite it (pass --overwrite)")


def save_torch_file(state_dict: dict, path: str, overwrite: bool = False):
    _check_target(path, overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    os.close(fd)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)
    else:
        import torch

        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, tmp)
    os.replace(tmp, path)


def save_orbax(tree: dict, path: str, overwrite: bool = False):
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


def convert_file(src: str, dst: str, arch, model_cfg, key: str | None = None, overwrite: bool = False):
    """Convert a checkpoint of `arch` (an Arch or a registered name) between the two sides;
    the direction follows the file kinds."""
    arch = _arch(arch)
    params = load_params(src, arch, model_cfg, key=key)
    if dst.endswith(_TORCH_SUFFIXES):
        save_torch_file(convert.jax_to_torch(params, arch.table, model_cfg), dst, overwrite)
    else:
        save_orbax(params, dst, overwrite)
