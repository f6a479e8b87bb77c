"""The shape of the parity package: its subpackages, its public API, and no architecture-name
branch anywhere in it (a static check of the source: an architecture is an object, and only
its own definition knows its name, to print it)."""
import ast
import os
import shutil

import parity

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "parity")
BUILTIN = {"dit", "flower", "policy", "meanflow", "imf", "pmf", "imf-dit", "pmf-dit"}  # the built-in architectures and objective


def _sources(root: str = ROOT):
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                yield os.path.relpath(path, root).replace(os.sep, "/"), path


def _named(node) -> bool:
    return isinstance(node, ast.Constant) and node.value in BUILTIN


def name_branches(root: str = ROOT) -> list[str]:
    """Every place in the code below `root` that branches on or looks up a built-in
    architecture's name: a comparison or membership test with it, an index or `.get` by it,
    a `case` on it, or a table keyed by it (docstrings, messages and the definitions' own
    `name=` may say the names)."""
    found = []
    for rel, path in _sources(root):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            hit = (
                (isinstance(node, ast.Compare) and any(_named(x) for x in [node.left, *node.comparators]))
                or (isinstance(node, ast.Subscript) and _named(node.slice))
                or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args
                    and _named(node.args[0]))
                or (isinstance(node, ast.MatchValue) and _named(node.value))
                or (isinstance(node, ast.Dict) and any(k is not None and _named(k) for k in node.keys))
            )
            if hit:
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_subpackages():
    subpackages = {rel.split("/")[0] for rel, _ in _sources() if "/" in rel}
    assert subpackages == {"core", "archs", "convert", "debug", "checks", "suite", "bench", "train_parity"}, subpackages
    flat = sorted(rel for rel, _ in _sources() if "/" not in rel)
    assert flat == ["__init__.py", "__main__.py", "cli.py", "pytest_plugin.py"], flat


def test_no_architecture_name_branch_anywhere():
    assert not name_branches(), name_branches()


def test_negative_control_a_planted_branch_is_found(tmp_path):
    root = tmp_path / "parity"
    shutil.copytree(ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "checks" / "planted.py").write_text('"""Only "dit" here: a docstring may name it."""\n'
                                                 'def f(v):\n    if v.arch.name == "flower":\n        return 1\n'
                                                 'X = TABLES.get("dit")\nNAME = "policy"\n')
    found = name_branches(str(root))
    assert sorted(f.split(":")[1] for f in found if f.startswith("checks/planted.py")) == ["3", "5"], found
    assert name_branches(ROOT) == []  # the same scan of the package as it is


def test_public_api():
    for name in ("Arch", "Variant", "Table", "Rule", "check", "CheckResult", "ParityReport", "ParityError",
                 "Control", "register_arch", "get_arch", "Layout", "InputBundle", "JvpOptions", "Check",
                 "MeanFlowConfig", "BenchSpec", "default_variants"):
        assert name in parity.__all__ and getattr(parity, name) is not None, name
