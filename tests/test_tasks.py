"""Training tasks as objects: a third task defined here, registered, and trained by both
trainers through their command-line entry without editing them; the registry's errors; and
a scan that no code outside a task's own definition branches on a task's name (with a
negative control that plants such a branch)."""
from __future__ import annotations

import ast
import os
from dataclasses import dataclass

import numpy as np
import pytest

from meanflow_common.checks import check_labels
from meanflow_common.data import Dataset
from meanflow_common.tasks import EvalOptions, Task, get_task, register_task, registered_tasks, unregister_task
from meanflow_common.train_config import TrainConfig, apply_assignments, check_batch, data_shape, model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------
# A third task: four labelled Gaussian blobs in 2-D, a tiny MLP per backend
# ----------------------------------------------------------------------------------

CENTRES = np.array([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]]) * 0.6


@dataclass(frozen=True)
class BlobNetConfig:
    """The MLP u(z [B, 2], t, h, label) -> [B, 2]; labels in [0, num_classes], the last the null class."""

    width: int = 16
    num_classes: int = 4


def _blob_split(rng, n):
    y = rng.integers(0, 4, n)
    x = (CENTRES[y] + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)
    return {"x": x, "y": y.astype(np.int64)}


def blob_dataset(seed: int) -> Dataset:
    rng = np.random.default_rng([seed, 7])
    return Dataset("blobs", seed, _blob_split(rng, 256), _blob_split(rng, 64), ("x", "y"), {"num_classes": 4})


def _check_blob_batch(mc, batch):
    if batch["x"].ndim != 2 or batch["x"].shape[1] != 2:
        raise ValueError(f"points must be [B, 2], got {batch['x'].shape}")


def _blob_eval(sample, num_steps, options, figure, title):
    labels = np.arange(4).repeat(8)
    x = sample(labels, num_steps=num_steps, seed=options.seed)
    return {"centre_error": float(np.mean(np.linalg.norm(x - CENTRES[labels], axis=1)))}


# The per-backend hooks: the framework imports wait until a trainer asks for them.

def _jax_hooks():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from jax_meanflow.tasks import TaskHooks

    class BlobNet(nn.Module):
        config: BlobNetConfig

        @nn.compact
        def __call__(self, z, t, h, y, train=False):
            w = self.config.width
            a = nn.Dense(w)(jnp.concatenate([z, t[:, None], h[:, None]], axis=-1))
            a = nn.silu(a + nn.Embed(self.config.num_classes + 1, w)(y))
            return nn.Dense(2)(a)

    def build(cfg, info, dtype):
        net = BlobNet(model_config(cfg))
        z, b = jnp.zeros((1, 2), dtype), jnp.zeros((1,), dtype)
        params = net.init(jax.random.PRNGKey(cfg.seed), z, b, b, jnp.zeros((1,), jnp.int32))["params"]
        return net, jax.tree.map(lambda a: a.astype(dtype), params)

    def u_fn(net, params, dropout_rng=None):
        return lambda z, t, h, y, train=False: net.apply({"params": params}, z, t, h, y)

    def null(net, mf, y):
        if not (mf.guidance_eq or mf.class_dropout_prob > 0):
            return None
        return jnp.full(y.shape[:1], net.config.num_classes, y.dtype)

    return TaskHooks(build=build, u_fn=u_fn, cond_array=lambda c, dtype: jnp.asarray(np.asarray(c, np.int32)),
                     null_cond=null)


def _torch_hooks():
    import torch

    from torch_meanflow.tasks import TaskHooks

    class BlobNet(torch.nn.Module):
        def __init__(self, config: BlobNetConfig):
            super().__init__()
            self.config = config
            self.inp = torch.nn.Linear(4, config.width)
            self.label = torch.nn.Embedding(config.num_classes + 1, config.width)
            self.out = torch.nn.Linear(config.width, 2)

        def forward(self, z, t, h, y, train=False):
            a = self.inp(torch.cat([z, t[:, None], h[:, None]], dim=-1))
            return self.out(torch.nn.functional.silu(a + self.label(y)))

    def build(cfg, info, dtype, device):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return BlobNet(model_config(cfg)).to(device=device, dtype=dtype)

    def null(net, mf, y):
        return torch.full_like(y, net.config.num_classes) if (mf.guidance_eq or mf.class_dropout_prob > 0) else None

    def labels(cond, device, dtype):
        return torch.as_tensor(np.asarray(cond), dtype=torch.long, device=device)

    return TaskHooks(build=build, u_fn=lambda net: net, null_cond=null, cond_tensor=labels)


class _LazyHooks(dict):
    """{"jax": ..., "torch": ...}, each built on first lookup (so importing this test module
    imports neither framework, as a user's task module need not)."""

    _makers = {"jax": _jax_hooks, "torch": _torch_hooks}

    def __missing__(self, backend):
        if backend not in self._makers:
            raise KeyError(backend)
        self[backend] = self._makers[backend]()
        return self[backend]

    def __contains__(self, backend):
        return backend in self._makers


BLOBS = Task(
    name="blobs",
    dataset=blob_dataset,
    presets={"tiny": BlobNetConfig()},
    preset_kind="blob MLP preset",
    batch_keys=("x", "y"),
    data_key="x",
    cond_key="y",
    float_keys=("x",),
    data_shape=lambda mc: (2,),
    layout="[B, 2]",
    check_batch=_check_blob_batch,
    check_cond=lambda mc, cond, allow_null: check_labels(cond, mc.num_classes, allow_null),
    hooks=_LazyHooks(),
    evaluate=_blob_eval,
    eval_steps={"meanflow": (1,), "flow_matching": (2,)},
    summary_metrics=("centre_error",),
)


@pytest.fixture
def blobs():
    register_task(BLOBS)
    yield BLOBS
    unregister_task(BLOBS)


SETS = ["task=blobs", "model=tiny", "steps=4", "batch_size=16"]


def _argv(out_dir, *sets):
    # the tiny digits recipe's optimiser and cadence, switched to this task
    return ["--preset", "tiny", "--no-progress", "--set", *SETS, f"out_dir={out_dir}", *sets]


@pytest.mark.heavy
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_registered_task_trains_through_the_cli_and_evaluates(tmp_path, blobs, backend):
    if backend == "jax":
        from jax_meanflow import train as T
    else:
        from torch_meanflow import train as T
    from meanflow_common.evaluate.cli import evaluate_loaded

    assert T.main(_argv(tmp_path / "mf")) == 0
    assert T.main(_argv(tmp_path / "fm", "method=flow_matching", "guidance_eq=", "class_dropout_prob=0")) == 0
    loaded = T.load_run(str(tmp_path / "mf"))
    assert loaded.cfg.task == "blobs" and loaded.step == 4
    x = loaded.sample(np.arange(4), seed=1)
    assert x.shape == (4, 2) and np.all(np.isfinite(x))
    with pytest.raises(ValueError, match=r"noise has shape \(4, 3\); blobs sampling of 4 takes \(4, 2\) \(\[B, 2\]\)"):
        loaded.sample(np.arange(4), noise=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="label"):
        loaded.sample(np.array([0, 9]))
    records = evaluate_loaded(T.load_run(str(tmp_path / "fm")), str(tmp_path / "fm"), backend, plots=False)
    assert [r["num_steps"] for r in records] == [2] and np.isfinite(records[0]["centre_error"])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_registered_task_resumes_bit_for_bit(tmp_path, blobs, backend):
    """The loop's guarantees hold for a user's task: 2 updates, then a resume to 4, repeat
    an uninterrupted run of 4 exactly."""
    if backend == "jax":
        from jax_meanflow import train as T
    else:
        from torch_meanflow import train as T

    cfg = apply_assignments(TrainConfig(), SETS + ["fast_compile=True", "ckpt_every=2", f"out_dir={tmp_path / 'a'}"])
    whole = T.train(cfg, progress=False)
    T.train(apply_assignments(cfg, ["steps=2", f"out_dir={tmp_path / 'b'}"]), progress=False)
    resumed = T.train(apply_assignments(cfg, [f"out_dir={tmp_path / 'b'}"]), resume=True, progress=False)
    assert set(resumed.losses) == {3, 4} and all(resumed.losses[k] == whole.losses[k] for k in (3, 4))
    with open(tmp_path / "a" / "config.json") as f:
        assert '"task": "blobs"' in f.read()


def test_the_config_asks_the_task(blobs):
    cfg = TrainConfig(task=BLOBS, model="tiny", out_dir="unused")  # a registered Task stands for its name
    assert cfg.task == "blobs" and model_config(cfg) == BlobNetConfig() and data_shape(cfg) == (2,)
    assert get_task("blobs") is get_task(BLOBS) is BLOBS and list(registered_tasks())[:2] == ["digits", "reach"]
    batch = blob_dataset(0).train
    check_batch(cfg, model_config(cfg), {k: v[:8] for k, v in batch.items()})
    with pytest.raises(KeyError, match=r"the blobs batch lacks \['y'\]"):
        check_batch(cfg, model_config(cfg), {"x": batch["x"][:8]})
    with pytest.raises(TypeError, match=r"batch\['x'\] must be floating point"):
        check_batch(cfg, model_config(cfg), {"x": np.zeros((8, 2), np.int64), "y": batch["y"][:8]})
    with pytest.raises(KeyError, match=r"unknown blob MLP preset \(TrainConfig.model for task 'blobs'\) 'small'; "
                                       r"available: tiny"):
        TrainConfig(task="blobs", model="small")
    with pytest.raises(ValueError, match=r"method 'regression' is not a method of task 'blobs' .*needs task='reach'"):
        TrainConfig(task="blobs", model="tiny", method="regression")
    assert model_config(apply_assignments(cfg, ["width=8"])).width == 8  # the task's model fields by name


def test_unknown_and_clashing_tasks_are_named():
    with pytest.raises(ValueError, match=r"unknown task 'mnist'; registered: digits, reach"):
        TrainConfig(task="mnist")
    with pytest.raises(ValueError, match=r"unknown task 'mnist'; registered: digits, reach"):
        get_task("mnist")
    with pytest.raises(ValueError, match="is not the one registered under its name"):
        TrainConfig(task=BLOBS, model="tiny")  # not registered
    register_task(BLOBS)
    try:
        with pytest.raises(ValueError, match="a task named 'blobs' is already registered"):
            register_task(Task(**{**BLOBS.__dict__}))
        assert register_task(BLOBS) is BLOBS  # the same object again is fine
    finally:
        unregister_task("blobs")
    with pytest.raises(ValueError, match="built-in task 'digits' cannot be unregistered"):
        unregister_task("digits")
    with pytest.raises(ValueError, match="has no tpu hooks"):
        get_task("digits").backend_hooks("tpu")
    with pytest.raises(ValueError, match="not one of its batch_keys"):
        Task(**{**BLOBS.__dict__, "data_key": "points"})


def test_builtin_tasks_keep_their_recipes():
    digits, reach = get_task("digits"), get_task("reach")
    assert (digits.data_key, digits.cond_key, reach.data_key, reach.cond_key) == ("x", "y", "actions", "obs")
    assert "regression" in reach.methods and "regression" not in digits.methods
    assert reach.run_info({"obs": np.zeros((3, 4))}) == {"obs_dim": 4}
    assert isinstance(EvalOptions(), EvalOptions) and digits.eval_steps["flow_matching"] == (1, 10)


# ----------------------------------------------------------------------------------
# No branch on a task's name outside the task definitions
# ----------------------------------------------------------------------------------

SCANNED = ("torch_meanflow", "jax_meanflow", "meanflow_common", "parity")
ALLOWED = (os.path.join("meanflow_common", "tasks") + os.sep,)  # a task's own definition


def _is_task_ref(node) -> bool:
    """cfg.task, task, tasks, r["task"]: an expression that holds a task's name."""
    if isinstance(node, ast.Name):
        return node.id in ("task", "tasks")
    if isinstance(node, ast.Attribute):
        return node.attr == "task"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "task"
    return False


def _is_literal(node) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return bool(node.elts) and all(_is_literal(e) for e in node.elts)
    return False


def task_name_branches(roots, base=ROOT) -> list[str]:
    """"path:line: code" of every ==, !=, in, not in between a task reference and a string
    literal (either side) in the .py files under `roots`, outside ALLOWED."""
    found = []
    for root in roots:
        for folder, _, files in os.walk(os.path.join(base, root)):
            for name in sorted(files):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, base)
                if not name.endswith(".py") or any(rel.startswith(a) for a in ALLOWED):
                    continue
                with open(path, encoding="utf-8") as f:
                    source = f.read()
                for node in ast.walk(ast.parse(source, rel)):
                    if not isinstance(node, ast.Compare):
                        continue
                    sides = [node.left, *node.comparators]
                    for op, left, right in zip(node.ops, sides, sides[1:]):
                        if isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) and (
                                (_is_task_ref(left) and _is_literal(right))
                                or (_is_task_ref(right) and _is_literal(left))):
                            found.append(f"{rel}:{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def test_no_code_branches_on_a_task_name():
    assert task_name_branches(SCANNED) == []


def test_the_scan_catches_a_planted_branch(tmp_path):
    pkg = tmp_path / "somepkg"
    pkg.mkdir()
    (pkg / "trainer.py").write_text(
        "def f(cfg, tasks, r, other):\n"
        "    if cfg.task == 'digits':\n"
        "        pass\n"
        "    x = 1 if cfg.task != \"reach\" else 2\n"
        "    if cfg.task in ('digits', 'reach') or 'reach' in tasks or r['task'] == 'reach':\n"
        "        pass\n"
        "    return cfg.task == other.task  # not a name: allowed\n")
    (tmp_path / "meanflow_common" / "tasks").mkdir(parents=True)
    (tmp_path / "meanflow_common" / "tasks" / "mine.py").write_text("def g(task):\n    return task == 'mine'\n")
    found = task_name_branches(["somepkg", "meanflow_common"], base=str(tmp_path))
    assert [line.split(":")[1] for line in found] == ["2", "4", "5", "5", "5"], found
    assert all(line.startswith(os.path.join("somepkg", "trainer.py")) for line in found)
