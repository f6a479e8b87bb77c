"""Bad input to the trainers and evaluators of both backends, each in its own process: a
clear one-line error naming the problem, exit status 2 for a usage error (1 where the
command line documents it: a run that fails, a run folder that cannot be loaded), no
traceback, and nothing written or changed.

The cases: field overrides (unknown, wrong type, out of range, an empty guidance window),
config files (missing, not JSON, unknown fields), out_dir (a file, below a file,
read-only), run folders (missing, of the other backend, without a checkpoint), checkpoints
(of another config, of the other backend, missing), the evaluators' --json target and the
multi-process environment (a partial set of JAX's or torchrun's variables, a process id out
of range). Runs a few seconds per case (the interpreter and the framework start up).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from meanflow_common.launch_env import JAX_VARS, TORCHRUN_VARS, LaunchEnvError, read_launch

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = (*JAX_VARS.address, JAX_VARS.count, JAX_VARS.rank, *TORCHRUN_VARS.address, TORCHRUN_VARS.count,
               TORCHRUN_VARS.rank)


def _run(module: str, argv: list[str], env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    full = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *argv], env=full, capture_output=True, text=True,
                          timeout=300, cwd=cwd or ROOT)


def _snapshot(folder) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = None if os.path.isdir(path) else \
                hashlib.sha1(open(path, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny 1-step run of each backend, one of torch with 2 heads, and a few bad files."""
    root = tmp_path_factory.mktemp("cli")
    import jax_meanflow.train as J
    import torch_meanflow.train as T
    from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

    for name, train, extra in (("torch", T.train, []), ("jax", J.train, []), ("torch2h", T.train, ["model.num_heads=2"])):
        train(apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={root / name}", "steps=1", *extra]), progress=False)
    (root / "afile").write_text("x")
    (root / "bad.json").write_text("{bad")
    (root / "unknown.json").write_text('{"stepz": 3}')
    os.makedirs(root / "nockpt")
    with open(root / "torch" / "config.json") as f, open(root / "nockpt" / "config.json", "w") as g:
        g.write(f.read())
    return root


T, J, TE, JE = "torch_meanflow.train", "jax_meanflow.train", "torch_meanflow.evaluate", "jax_meanflow.evaluate"
TINY = ["--preset", "tiny", "--no-progress", "--set", "steps=1"]
EVAL = ["--n-per-class", "2", "--no-plots", "--no-anchors"]

# (module, argv with {root}, env, exit status, words in the one-line message)
CASES = [
    (T, [*TINY, "depht=2", "out_dir={root}/new"], {}, 2, "unknown config field 'depht'"),
    (J, [*TINY, "steps=two", "out_dir={root}/new"], {}, 2, "TrainConfig.steps='two': expected int"),
    (T, [*TINY, "steps=-1", "out_dir={root}/new"], {}, 2, "TrainConfig.steps=-1 must be >= 1"),
    (J, [*TINY, "optim.lr=nan", "out_dir={root}/new"], {}, 2, "OptimConfig.lr"),
    (T, [*TINY, "mf.t_start=0.9", "mf.t_end=0.1", "out_dir={root}/new"], {}, 2, "t_start=0.9 > t_end=0.1"),
    (J, ["--config", "{root}/missing.json"], {}, 2, "config file not found"),
    (T, ["--config", "{root}/bad.json"], {}, 2, "not valid JSON"),
    (J, ["--config", "{root}/unknown.json"], {}, 2, "unknown TrainConfig field(s) ['stepz']"),
    (T, ["--resume", "--overwrite"], {}, 2, "not allowed with argument --resume"),
    (T, [*TINY, "out_dir={root}/afile"], {}, 2, "out_dir {root}/afile is a file, not a folder"),
    (J, [*TINY, "out_dir={root}/afile"], {}, 2, "out_dir {root}/afile is a file, not a folder"),
    (T, [*TINY, "out_dir={root}/afile/run"], {}, 2, "{root}/afile is a file, not a folder"),
    (J, [*TINY, "out_dir={root}/afile/run"], {}, 2, "{root}/afile is a file, not a folder"),
    (J, ["--resume", "--set", "out_dir={root}/missing"], {}, 2, "{root}/missing holds no run (no config.json)"),
    (T, ["--resume", "--set", "out_dir={root}/jax"], {}, 1, "was written by 'jax', not 'torch'"),
    (J, ["--resume", "--set", "out_dir={root}/torch"], {}, 1, "was written by 'torch', not 'jax'"),
    (T, ["--resume", "--set", "out_dir={root}/torch", "steps=0"], {}, 2, "TrainConfig.steps=0 must be >= 1"),
    (T, [*TINY, "out_dir={root}/torch"], {}, 1, "already holds a run"),
    # the multi-process environment, set in part or out of range
    (J, [*TINY, "out_dir={root}/new"], {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, 2,
     "JAX_COORDINATOR_ADDRESS not"),
    (J, [*TINY, "out_dir={root}/new"], {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_PROCESS_ID": "0"}, 2,
     "JAX_NUM_PROCESSES not"),
    (J, [*TINY, "out_dir={root}/new"], {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "2",
                                        "JAX_PROCESS_ID": "2"}, 2, "JAX_PROCESS_ID=2 is out of range"),
    (J, [*TINY, "out_dir={root}/new"], {"JAX_COORDINATOR_ADDRESS": "localhost:1", "JAX_NUM_PROCESSES": "two",
                                        "JAX_PROCESS_ID": "0"}, 2, "JAX_NUM_PROCESSES='two' is not an integer"),
    (T, [*TINY, "out_dir={root}/new"], {"RANK": "1"}, 2, "MASTER_ADDR, MASTER_PORT, WORLD_SIZE not"),
    (T, [*TINY, "out_dir={root}/new"], {"WORLD_SIZE": "2", "RANK": "1"}, 2, "MASTER_ADDR, MASTER_PORT not"),
    (T, [*TINY, "out_dir={root}/new"], {"MASTER_ADDR": "localhost", "MASTER_PORT": "29500", "WORLD_SIZE": "2",
                                        "RANK": "2"}, 2, "RANK=2 is out of range"),
    # the evaluators
    (TE, ["--run", "{root}/missing"], {}, 1, "{root}/missing holds no run"),
    (JE, ["--run", "{root}/torch"], {}, 1, "was written by 'torch'"),
    (TE, ["--run", "{root}/nockpt", *EVAL], {}, 1, "has no checkpoint"),
    (TE, ["--run", "{root}/torch", "--checkpoint", "{root}/torch2h/checkpoints/ckpt_00000001.pt", *EVAL], {}, 1,
     "model.num_heads: recorded 2, now 4"),
    (JE, ["--run", "{root}/jax", "--checkpoint", "{root}/torch/checkpoints/ckpt_00000001.pt", *EVAL], {}, 1,
     "is a file, not a checkpoint folder of the JAX trainer"),
    (TE, ["--run", "{root}/torch", "--checkpoint", "{root}/jax/checkpoints/1", *EVAL], {}, 1,
     "is a folder, not a checkpoint file of the PyTorch trainer"),
    (TE, ["--run", "{root}/torch", "--checkpoint", "{root}/missing.pt", *EVAL], {}, 1, "checkpoint not found"),
    (TE, ["--run", "{root}/torch", "--json", "{root}/afile/out.json", *EVAL], {}, 2,
     "{root}/afile is a file, not a folder"),
    (JE, ["--run", "{root}/jax", "--num-steps", "0"], {}, 2, "argument --num-steps: must be an integer >= 1"),
]


def _fill(x, root):
    return x.replace("{root}", str(root))


def _case_id(i: int, case) -> str:
    module, _, env, status, words = case
    short = module.replace("_meanflow", "")
    launch = f" [{' '.join(env)}]" if env else ""
    return f"{i:02d} {short}{launch}: {words[:40]}"


def _run_here(module: str, argv: list[str], env: dict, monkeypatch, capsys) -> tuple[int, str]:
    """(exit status, stderr) of the command's `main` in this process, as `python -m` would end:
    an exception escaping it fails the test (the traceback a user would see)."""
    import importlib

    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        code = importlib.import_module(module).main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("message"): Python prints it and exits 1
        err, code = err + code + "\n", 1
    return 0 if code is None else code, err


# Each case in this process (the frameworks start once); one per command also in its own
# process, as a user runs it.
IN_A_PROCESS = {next(i for i, c in enumerate(CASES) if c[0] == m) for m in (T, J, TE, JE)} | {18, 23}


@pytest.mark.parametrize("module, argv, env, status, words", CASES, ids=[_case_id(i, c) for i, c in enumerate(CASES)])
def test_bad_input_is_one_clear_line(runs, module, argv, env, status, words, monkeypatch, capsys, request):
    before = _snapshot(runs)
    args = [_fill(a, runs) for a in argv]
    index = int(request.node.callspec.id.split()[0])
    if index in IN_A_PROCESS:
        out = _run(module, args, env)
        code, err = out.returncode, out.stderr
    else:
        code, err = _run_here(module, args, env, monkeypatch, capsys)
    assert code == status, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("usage:", " ", "WARNING:absl"))]
    assert len(lines) == 1 and _fill(words, runs) in lines[0], err[-3000:]
    assert _snapshot(runs) == before  # nothing written, nothing changed


def _read_only_mount(path) -> bool:
    os.makedirs(path)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        return True
    # root writes through permission bits: a read-only file system is the only refusal it meets
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("module", [T, J])
def test_a_read_only_out_dir_is_refused(tmp_path, module):
    ro = tmp_path / "ro"
    if not _read_only_mount(ro):
        pytest.skip("no read-only folder to test with (root, and mount is not permitted)")
    try:
        out = _run(module, [*TINY, f"out_dir={ro}/run"])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert f"out_dir {ro}/run cannot be written: {ro} is read-only" in out.stderr


@pytest.mark.parametrize("env, words", [
    ({"JAX_PROCESS_ID": "1"}, "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES not"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, "must be >= 1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "-1"}, "out of range"),
])
def test_partial_jax_launch_variables(env, words):
    with pytest.raises(LaunchEnvError, match=words):
        read_launch(JAX_VARS, env)


def test_complete_or_absent_launch_variables():
    assert read_launch(JAX_VARS, {}) is None and read_launch(TORCHRUN_VARS, {"LOCAL_RANK": "0"}) is None
    launch = read_launch(TORCHRUN_VARS, {"MASTER_ADDR": "h", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "3"})
    assert (launch.count, launch.rank) == (4, 3)
    with pytest.raises(LaunchEnvError, match="MASTER_PORT=0 is not a port number"):
        read_launch(TORCHRUN_VARS, {"MASTER_ADDR": "h", "MASTER_PORT": "0", "WORLD_SIZE": "2", "RANK": "0"})
