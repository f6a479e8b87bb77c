"""Data parallelism of the JAX trainer on `jax.sharding`: a 1-D device mesh, the global
batch sharded on its batch axis, parameters and optimizer state replicated.

Twin of `torch_meanflow.parallel` (torchrun DDP). The randomness of a step is drawn for
the global batch exactly as on one device, then sharded, so a step on N devices computes
the 1-device step with the batch reductions split over devices (float64: equal to ~1e-15).
XLA inserts the gradient all-reduce itself (the mean over the sharded batch axis), so
there is no hand-written sync to forget; `check_replicas` still verifies that every
device's copy of the parameters is identical after a step.

Multi-process (several hosts, or one process per GPU): `jax.distributed.initialize()` in
every process before the trainer touches JAX (`python -m jax_meanflow.train` does it when
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set); `jax.devices()` then lists every process's devices, the mesh
spans them (`devices` must be 0 or their total) and each process fills only its own
shards of the global batch, which every process computes (it is a pure function of seed
and step).
"""
from __future__ import annotations

import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["AXIS", "distributed_from_env", "share", "make_mesh", "batch_sharding", "replicated", "to_global",
           "shard_batch", "replicate", "host_value", "check_replicas"]

AXIS = "batch"


def distributed_from_env() -> bool:
    """jax.distributed.initialize() when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID are set (call it before anything touches a JAX backend); False when none
    is. Any of them set without the others, or a process id outside [0, count), is a
    `meanflow_common.launch_env.LaunchEnvError` naming the variable: never a silent single
    process."""
    from meanflow_common.launch_env import JAX_VARS, read_launch

    launch = read_launch(JAX_VARS)
    if launch is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU meshes across processes
    jax.distributed.initialize(num_processes=launch.count, process_id=launch.rank)
    return True


def share(value: Any) -> Any:
    """Process 0's `value` on every process (pickled; a collective)."""
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(value), np.uint8) if jax.process_index() == 0 else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
    buf = np.zeros(size, np.uint8)
    buf[:data.size] = data
    return pickle.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())


def make_mesh(devices: int) -> Mesh:
    """A 1-D mesh over the first `devices` of `jax.devices()` (0 = all of them).

    ValueError naming the count when fewer devices are visible.
    """
    visible = jax.devices()
    n = len(visible) if devices == 0 else devices
    if jax.process_count() > 1 and n != len(visible):
        raise ValueError(f"TrainConfig.devices={devices}: with {jax.process_count()} JAX processes the mesh spans "
                         f"all {len(visible)} devices; set devices=0 or {len(visible)}")
    if n > len(visible):
        raise ValueError(
            f"TrainConfig.devices={devices} but JAX sees {len(visible)} {jax.default_backend()} device(s); on CPU, "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (set before JAX starts) gives {n} host devices")
    return Mesh(np.array(visible[:n]), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Axis 0 split over the mesh."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def to_global(value, sharding: NamedSharding) -> jax.Array:
    """A host value (NumPy or a single-device array, the same on every process) as a global
    array with `sharding`; each process fills only the shards of its own devices."""
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Every leaf with a batch axis 0 split over the mesh (shape [B, ...], B divisible by
    the mesh size)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda a: to_global(a, sharding), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf copied to every device of the mesh (dtypes, PRNG keys included, kept)."""
    sharding = replicated(mesh)

    def put(a):
        if jnp.issubdtype(getattr(a, "dtype", np.float32), jax.dtypes.prng_key):
            return jax.device_put(a, sharding)
        return to_global(a, sharding)

    return jax.tree.map(put, tree)


def host_value(a) -> np.ndarray:
    """A replicated array's value from this process's first copy (works multi-host)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return np.asarray(a.addressable_data(0))
    return np.asarray(a)


def check_replicas(tree: Any, step: int, what: str = "parameters") -> None:
    """RuntimeError naming the leaf and devices when the copies of a replicated tree differ.

    The checksum of each copy is (sum, sum of squares) in float64, on its own device; only
    the 2 numbers per copy and leaf travel to the host.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in leaves:
        if not isinstance(leaf, jax.Array) or len(leaf.addressable_shards) < 2:
            continue
        sums = []
        for shard in leaf.addressable_shards:
            x = shard.data.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
            sums.append((shard.device, np.asarray([jnp.sum(x), jnp.sum(x * x)])))
        ref_dev, ref = sums[0]
        for dev, got in sums[1:]:
            if not np.array_equal(got, ref):
                raise RuntimeError(
                    f"after update {step} the {what} differ between devices: {jax.tree_util.keystr(path)} has "
                    f"checksum {got.tolist()} on {dev} but {ref.tolist()} on {ref_dev}")
