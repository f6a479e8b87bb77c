"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2 by
tests/test_train_parallel.py (XLA reads the flag once, at JAX start-up). Trains the tiny
DiT in float64 from randomised weights with devices=1 and devices=2, resumes each run's
step-2 checkpoint on the other device count, and runs the replica check on a tree whose
device copies agree and on one whose copies differ. Prints one JSON object.
"""
import dataclasses
import json
import os
import shutil
import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from jax_meanflow import parallel  # noqa: E402
from jax_meanflow.params import randomize_params  # noqa: E402
from jax_meanflow.train import JaxBackend, make_model, train  # noqa: E402
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments  # noqa: E402


def weights(state):
    return [np.asarray(a) for a in jax.tree.leaves((state.params, state.ema_params))]


def rel(a, b) -> float:
    """Relative L2 distance of two weight lists taken as one vector. (Per leaf, the key part
    of the qkv bias stands out: softmax ignores it, so its gradient is pure rounding, which
    Adam's normalisation turns into 1e-12-relative differences of that leaf.)"""
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b))
    return (num / max(sum(float(np.sum(x ** 2)) for x in a), 1e-300)) ** 0.5


def resumed_copy(src: str, dst: str, devices: int, cfg):
    """Continue `src`'s step-2 checkpoint to cfg.steps with `devices` devices, in a copy."""
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", str(cfg.steps)))
    return train(dataclasses.replace(cfg, out_dir=dst, devices=devices), resume=True, progress=False)


def main(root: str) -> int:
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={root}/one", "steps=3", "dtype=float64",
                                                     "ckpt_every=2"])
    init = randomize_params(make_model(cfg)[1], 3)
    one = train(cfg, init_params=init, progress=False)
    two = train(dataclasses.replace(cfg, out_dir=f"{root}/two", devices=2), init_params=init, progress=False)
    two_to_one = resumed_copy(f"{root}/two", f"{root}/two_to_one", 1, cfg)
    one_to_two = resumed_copy(f"{root}/one", f"{root}/one_to_two", 2, cfg)

    leaf = jax.tree.leaves(two.state.params)[0]
    mesh = parallel.make_mesh(2)
    good = parallel.replicate({"w": np.arange(6.0)}, mesh)
    parallel.check_replicas(good, 1)
    devs = list(mesh.devices.flat)
    copies = [jax.device_put(np.arange(6.0), devs[0]), jax.device_put(np.arange(6.0) + [0, 0, 0, 0, 0, 1e-9], devs[1])]
    bad = {"w": jax.make_array_from_single_device_arrays((6,), parallel.replicated(mesh), copies)}
    try:
        parallel.check_replicas(bad, 1)
        caught = ""
    except RuntimeError as err:
        caught = str(err)
    try:
        train(dataclasses.replace(cfg, out_dir=f"{root}/odd", devices=2, batch_size=7), progress=False)
        odd = ""
    except ValueError as err:
        odd = str(err) + (" (folder written)" if os.path.exists(f"{root}/odd") else "")
    with open(f"{root}/two/config.json") as f:
        world = json.load(f)["world"]
    print(json.dumps({
        "visible": jax.device_count(),
        "devices_0": JaxBackend().world(dataclasses.replace(cfg, devices=0)).devices,
        "two_on_devices": len(leaf.sharding.device_set),
        "moved": rel(weights(one.state), [np.asarray(a) for a in jax.tree.leaves((init, init))]),
        "two_vs_one": rel(weights(one.state), weights(two.state)),
        "two_to_one": rel(weights(one.state), weights(two_to_one.state)),
        "one_to_two": rel(weights(one.state), weights(one_to_two.state)),
        "losses_one": one.losses, "losses_two": two.losses,
        "world": world,
        "bad_replicas": caught,
        "odd_batch": odd,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
