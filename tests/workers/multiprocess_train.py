"""One of 2 JAX processes (1 CPU device each) joined by jax.distributed, run by
tests/test_train_parallel.py: the tiny DiT in float64 from randomised weights with
devices=0 (the mesh spans both processes), through the trainer's CLI entry point.

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \\
        python tests/workers/multiprocess_train.py OUT_DIR INIT.npz
"""
import sys

import jax
import numpy as np

from jax_meanflow import parallel
from jax_meanflow import train as T
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments


def main(out_dir: str, init_path: str) -> int:
    parallel.distributed_from_env()
    jax.config.update("jax_enable_x64", True)
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={out_dir}", "steps=3", "dtype=float64",
                                                     "ckpt_every=2", "devices=0"])
    _, template = T.make_model(cfg)
    leaves = np.load(init_path)
    init = jax.tree.unflatten(jax.tree.structure(template), [leaves[f"a{i}"] for i in range(len(leaves.files))])
    result = T.train(cfg, init_params=init, progress=False)
    print(f"process {jax.process_index()} of {jax.process_count()} done step {result.step} "
          f"devices {len(jax.devices())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
