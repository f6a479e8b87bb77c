"""The import graph of the parity package: every import runs down the layers, and no module
imports itself back through others (a static check of the source, function-level imports and
`importlib.import_module("...")` literals included: a lazy import is still an arrow).

The layers, lowest first (a module may import its own layer and those below):
  convert  the table engine and the tables (no Arch)
  core     Arch, inputs, the two sides' runs, comparison, the float32 rule, controls
  archs    the built-in architectures and the registry
  debug    the divergence debugger
  checks   the checks beyond the objective comparison (one object each)
  suite    the suite loop, the report and its blame, `parity.check`
  bench    the operations commands (benchmarks, rule-sizes, parity-cost, gpu-check)
  train_parity  the trainers' comparison (an operations command of its own)
  (top)    cli, pytest_plugin, __init__, __main__
"""
from __future__ import annotations

import ast
import os
import shutil

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "parity")
LAYERS = ("convert", "core", "archs", "debug", "checks", "suite", "bench", "train_parity")
TOP = len(LAYERS)


def _module_name(rel: str, package: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:
        return TOP
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def import_graph(root: str = ROOT, package: str = "parity") -> dict[str, set[str]]:
    """{module: the modules of `package` it imports}, for every .py file below `root` (the
    package's folder)."""
    modules = {}
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                modules[_module_name(os.path.relpath(path, root).replace(os.sep, "/"), package)] = path
    graph = {}
    for name, path in modules.items():
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        here = name if path.endswith("__init__.py") else name.rpartition(".")[0]  # for relative imports
        targets = set()
        for node in ast.walk(tree):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names]
                # the package itself only where a name is not one of its modules
                found = subs + ([base] if any(s not in modules for s in subs) else [])
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) ==
                  "import_module" and node.args):
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found = [arg.value]
                else:  # a computed name: every module named by a string literal of the file is a candidate
                    found = [c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str)
                             and c.value.split(".")[0] == package and c.value.count(".") and " " not in c.value]
            for target in found:
                # the longest prefix that is a module of the package ("from a import b": b may be a name)
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == package:
                    targets.add(target)
        graph[name] = targets
    return graph


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a module into a higher layer than its own."""
    return sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_runs_down_the_layers():
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if m.count(".")} - {"cli", "pytest_plugin", "__main__"} <= set(LAYERS)
    assert not upward_arrows(graph), upward_arrows(graph)


def test_no_import_circle():
    assert not cycles(import_graph()), cycles(import_graph())


def _planted(tmp_path, rel: str, text: str) -> str:
    root = tmp_path / "parity"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / rel).write_text(text)
    return str(root)


def test_negative_control_an_arrow_back_up_is_caught(tmp_path):
    # a lazy import inside a function counts as much as one at the top
    root = _planted(tmp_path, "core/planted.py", "def f():\n    from parity.suite import run\n")
    assert "parity.core.planted -> parity.suite.run" in upward_arrows(import_graph(root))


def test_negative_control_a_circle_is_caught(tmp_path):
    root = _planted(tmp_path, "core/planted_a.py", "import importlib\n"
                    "def f():\n    return importlib.import_module('parity.core.planted_b')\n")
    (tmp_path / "parity" / "core" / "planted_b.py").write_text("from parity.core import planted_a\n")
    assert ["parity.core.planted_a", "parity.core.planted_b"] in cycles(import_graph(root))


@pytest.mark.parametrize("package", ["meanflow_common", "jax_meanflow", "torch_meanflow"])
def test_no_import_circle_in_the_other_packages(package):
    root = os.path.join(os.path.dirname(ROOT), package)
    assert not cycles(import_graph(root, package)), cycles(import_graph(root, package))
