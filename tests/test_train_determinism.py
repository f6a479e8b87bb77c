"""A training seed fixes the trained weights bit for bit across fresh processes, on both
backends, whatever the log and checkpoint cadence, the Python hash seed and (JAX) the
Eigen thread setting; another seed gives other weights (the control). Each run records in
config.json what the framework ran with (`runtime`: the torch intra-op thread count, whose
change does move a float32 trajectory on a CPU: docs/TRAINING.md, "Reproducing a run").
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.heavy  # four fresh processes, three short runs each backend (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "seed_train.py")


def _run(backend, out, env_extra, seeds, *sets):
    env = {**os.environ, "PYTHONPATH": ROOT, **env_extra}
    proc = subprocess.run([sys.executable, WORKER, backend, str(out), seeds, "steps=5", *sets], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(os.path.join(out, "weights.npz")) as f:
        return info, {k: f[k] for k in f.files}


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_seed_gives_bit_identical_weights_in_fresh_processes(tmp_path, backend):
    flags = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"} if backend == "jax" else {}
    info_a, a = _run(backend, tmp_path / "a", {"PYTHONHASHSEED": "1", "OMP_NUM_THREADS": "1", "XLA_FLAGS": ""}, "0,1",
                     "ckpt_every=4", "log_every=1")
    info_b, b = _run(backend, tmp_path / "b", {"PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "1", **flags}, "0",
                     "ckpt_every=3", "log_every=2", "keep_last=1")
    seed0 = sorted(k for k in a if k.startswith("s0/"))
    assert seed0 and set(seed0) == set(b)
    for k in seed0:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the control: another training seed, same init and code, other weights (the comparison can fail)
    differ = [k for k in seed0 if not np.array_equal(a[k], a["s1/" + k[3:]])]
    assert len(differ) > len(seed0) // 2
    # the runtime record names what decides the CPU kernels
    if backend == "torch":
        assert info_a["runtime"]["intra_op_threads"] == 1 and info_a["runtime"]["OMP_NUM_THREADS"] == "1"
    else:
        assert info_b["runtime"]["XLA_FLAGS"] == flags["XLA_FLAGS"] and info_a["runtime"]["XLA_FLAGS"] == ""
    assert "torch" in info_a["runtime"] or "jax" in info_a["runtime"]
