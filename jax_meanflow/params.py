"""Parameter randomisation and counting for Flax parameter trees.

Why randomise: the DiT (and FLOWER) zero-initialise their adaLN outputs and final layers,
so at initialisation u == 0 and du/dt == 0 and every parity or derivative check passes
vacuously. `randomize_params` replaces EVERY leaf, zero-initialised ones included.

Rule (by the leaf's name, as Flax names them), chosen so activations stay O(1) through
a DiT or FLOWER network with all gates and final layers non-zero:
- `kernel` (Dense [in, out], Conv HWIO): N(0, (scale / sqrt(fan_in))^2), fan_in = prod(shape[:-1]);
- `scale` (norm gains): 1 + N(0, (0.1 scale)^2);
- `bias` and any other 1-D leaf: N(0, (0.1 scale)^2);
- `embedding` and any other leaf of rank >= 2 (tables added to activations): N(0, scale^2).
Numbers come from a float64 NumPy generator and are cast to each leaf's dtype (or to the
`dtype` asked for), one leaf at a time: `random_arrays` needs only the tree's shapes (e.g.
`jax.eval_shape` of an init), so no initialisation is computed and no float64 copy of the
whole tree is made when float32 weights are wanted. The torch
twin uses the equivalent rule for torch layouts; the two need not give identical numbers
(the parity harness randomises one side and converts).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["randomize_params", "random_arrays", "count_params", "leaf_std"]


def leaf_std(name: str, shape: tuple[int, ...], scale: float = 1.0) -> tuple[float, float]:
    """(mean, std) of the random draw for a leaf called `name` with `shape`."""
    if name == "kernel":
        return 0.0, scale / float(np.sqrt(np.prod(shape[:-1])))
    if name == "scale":
        return 1.0, 0.1 * scale
    if len(shape) <= 1:
        return 0.0, 0.1 * scale
    return 0.0, scale


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def random_arrays(params, seed: int, scale: float = 1.0, dtype=None):
    """A tree of NumPy arrays of `params`' structure and shapes with every leaf random.

    `params`: arrays or anything with `.shape` and `.dtype` (jax.ShapeDtypeStruct);
    `dtype`: of every leaf (default: each leaf's own). The draws are the same whatever the
    dtype (float64, then rounded), so a float32 tree is the float64 tree rounded.
    """
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        names = [_key_name(p) for p in path]
        leaf_dtype = jnp.dtype(leaf.dtype) if hasattr(leaf, "dtype") else jnp.result_type(leaf)
        if not jnp.issubdtype(leaf_dtype, jnp.floating):
            raise TypeError(f"parameter {'/'.join(names)!r} has non-float dtype {leaf_dtype}; cannot randomise")
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))
        mean, std = leaf_std(names[-1] if names else "", shape, scale)
        values = mean + std * rng.standard_normal(shape)  # float64
        return values.astype(leaf_dtype if dtype is None else dtype, copy=False)

    return jax.tree_util.tree_map_with_path(draw, params)


def randomize_params(params, seed: int, scale: float = 1.0):
    """A new tree of the same structure, shapes and dtypes with every leaf random (JAX arrays)."""
    return jax.tree_util.tree_map(jnp.asarray, random_arrays(params, seed, scale))


def count_params(params) -> int:
    """Total number of scalars in a parameter tree."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))
