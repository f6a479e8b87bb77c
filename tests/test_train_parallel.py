"""Data parallelism on CPU: JAX on a 2-device host mesh, PyTorch under torchrun with 2 gloo
processes. Both in subprocesses: XLA reads its device count once, at start-up, and torchrun
starts its own processes. float64 from randomised weights, the tiny DiT, 3 updates.

JAX multi-process (2 processes joined by jax.distributed, one CPU device each) is the
`slow` test here (MEANFLOW_SLOW_TESTS=1). Checked: N devices/processes reproduce the 1-device run; checkpoints move between device
counts both ways; the replica/sync checks fire on a real desync (negative controls: JAX a
replicated array whose device copies differ, torch the run with the all-reduce removed),
and without the check a missing all-reduce trains silently to other weights.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from meanflow_common.metrics import read_metrics

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = os.path.join(ROOT, "tests", "workers")


def _env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **extra}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    out = subprocess.run([sys.executable, os.path.join(WORKERS, "mesh_train.py"), str(root)],
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return root, json.loads(out.stdout.strip().splitlines()[-1])


def test_jax_two_host_devices_reproduce_one_device(mesh_runs):
    _, r = mesh_runs
    assert r["visible"] == 2 and r["devices_0"] == 2  # devices=0: every visible device
    assert r["two_on_devices"] == 2  # the state really lives on the 2-device mesh
    assert r["world"] == {"processes": 1, "devices": 2}
    assert r["moved"] > 1e-2  # the weights travelled: agreement is not a frozen start
    assert r["two_vs_one"] < 1e-12, r
    assert r["two_to_one"] < 1e-12 and r["one_to_two"] < 1e-12, r
    np.testing.assert_allclose(list(r["losses_two"].values()), list(r["losses_one"].values()), rtol=1e-13)
    assert "the parameters differ between devices" in r["bad_replicas"], r["bad_replicas"]
    assert r["odd_batch"] == "TrainConfig.batch_size=7 (the global batch) does not split evenly over 2 devices"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 35 s on 2 cores: two JAX processes each compile the step
def test_jax_two_processes_reproduce_one_device(mesh_runs, tmp_path):
    import jax

    from jax_meanflow.params import randomize_params
    from jax_meanflow.train import load_run, make_model
    from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

    root, _ = mesh_runs
    cfg = apply_assignments(TRAIN_PRESETS["tiny"], ["dtype=float64"])
    init = randomize_params(make_model(cfg)[1], 3)  # as mesh_train.py's
    np.savez(tmp_path / "init.npz", **{f"a{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(init))})
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(WORKERS, "multiprocess_train.py"), str(tmp_path / "run"),
                               str(tmp_path / "init.npz")],
                              env=_env(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "process 0 of 2 done step 3 devices 2" in outs[0][0] and "process 1 of 2" in outs[1][0]
    one, two = load_run(str(root / "one")), load_run(str(tmp_path / "run"))
    assert two.step == 3
    a = [np.asarray(x) for x in jax.tree.leaves((one.state.params, one.state.ema_params))]
    b = [np.asarray(x) for x in jax.tree.leaves((two.state.params, two.state.ema_params))]
    assert _rel(a, b) < 1e-12, _rel(a, b)
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["world"] == {"processes": 2, "devices": 2}


def _torchrun(out_dir, steps, *flags, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(WORKERS, "ddp_train.py"), str(out_dir), str(steps), *flags]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """The 1-process references, in this process: 3 updates, and 2 updates to resume from."""
    import torch

    sys.path.insert(0, WORKERS)
    from ddp_train import random_init, recipe

    from torch_meanflow.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for name, steps in (("one", 3), ("one_2", 2)):
        cfg = recipe(str(root / name), steps)
        runs[name] = train(cfg, init_params=random_init(cfg), progress=False)
    return root, runs


def _weights(path):
    import torch

    payload = torch.load(path, weights_only=True)
    return [v.double().numpy() for part in ("model", "ema") for v in payload[part].values()], payload["meta"]


def _rel(a, b):
    num = sum(float(np.sum((x - y) ** 2)) for x, y in zip(a, b))
    return (num / sum(float(np.sum(x ** 2)) for x in a)) ** 0.5


def test_torchrun_two_processes_reproduce_one_process(torch_runs):
    root, runs = torch_runs
    ref, _ = _weights(runs["one"].checkpoint)
    start, _ = _weights(os.path.join(root, "one_2", "checkpoints", "ckpt_00000002.pt"))
    out = _torchrun(root / "two", 3)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("rank done step 3") == 2  # both ranks trained
    got, meta = _weights(os.path.join(root, "two", "checkpoints", "ckpt_00000003.pt"))
    assert meta["world"] == {"processes": 2, "devices": 2}
    assert _rel(ref, start) > 1e-3  # update 3 moved the weights
    assert _rel(ref, got) < 1e-12, _rel(ref, got)
    with open(os.path.join(root, "two", "config.json")) as f:
        assert json.load(f)["world"] == {"processes": 2, "devices": 2}
    rows = read_metrics(os.path.join(root, "two", "metrics.csv"))
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["devices"] == 2 for r in rows)
    # the displayed (unweighted) loss, v_loss and the weighted loss are the global batch's, as on one process
    one_rows = read_metrics(os.path.join(runs["one"].run_dir, "metrics.csv"))
    for key in ("loss", "v_loss", "weighted_loss"):
        np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in one_rows], rtol=1e-9, err_msg=key)

    # a 2-process checkpoint resumed by 1 process, and a 1-process one by 2 processes
    from torch_meanflow.train import train

    shutil.copytree(root / "two", root / "two_to_one")
    os.remove(os.path.join(root, "two_to_one", "checkpoints", "ckpt_00000003.pt"))
    sys.path.insert(0, WORKERS)
    from ddp_train import recipe

    resumed = train(recipe(str(root / "two_to_one"), 3), resume=True, progress=False)
    assert sorted(resumed.losses) == [3]
    assert _rel(ref, _weights(resumed.checkpoint)[0]) < 1e-12
    out = _torchrun(root / "one_2", 3, "--resume")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _rel(ref, _weights(os.path.join(root, "one_2", "checkpoints", "ckpt_00000003.pt"))[0]) < 1e-12


def test_torchrun_without_the_gradient_sync_is_caught(torch_runs):
    root, runs = torch_runs
    out = _torchrun(root / "nosync", 3, "--no-sync")
    assert out.returncode != 0
    assert "after update 1 rank 1 differs from rank 0 in grad of" in out.stdout + out.stderr
    assert "were not synchronised" in out.stdout + out.stderr
    assert not os.path.exists(os.path.join(root, "nosync", "checkpoints", "ckpt_00000002.pt"))
    # the trap itself: without the check the run finishes, exit 0, with other weights
    out = _torchrun(root / "nosync_unchecked", 3, "--no-sync", "--set", "sync_check_steps=0")
    assert out.returncode == 0, out.stderr[-3000:]
    ref, _ = _weights(runs["one"].checkpoint)
    got, _ = _weights(os.path.join(root, "nosync_unchecked", "checkpoints", "ckpt_00000003.pt"))
    assert _rel(ref, got) > 1e-4
