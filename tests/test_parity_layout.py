"""The shape of the parity package: its subpackages, its public API, and no architecture-name
branch outside the architectures' own definitions (a static check of the source)."""
import os
import re

import parity

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "parity")
# Where a built-in architecture's name may appear: its definition, its table, and the code
# that is about one built-in network by design (the trainers' comparison on the DiT).
OWN = ("archs/", "convert/tables/", "train_parity/")
NAMES = re.compile(r"""["'](dit|flower|policy)["']""")


def _sources():
    for folder, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                yield os.path.relpath(path, ROOT).replace(os.sep, "/"), path


def test_subpackages():
    subpackages = {rel.split("/")[0] for rel, _ in _sources() if "/" in rel}
    assert {"core", "archs", "convert", "debug", "bench", "extra", "train_parity"} <= subpackages
    flat = sorted(rel for rel, _ in _sources() if "/" not in rel)
    assert flat == ["__init__.py", "__main__.py", "cli.py", "pytest_plugin.py"], flat


def test_no_architecture_name_branch_outside_the_definitions():
    found = []
    for rel, path in _sources():
        if rel.startswith(OWN):
            continue
        with open(path) as f:
            for n, line in enumerate(f, 1):
                code = line.split("#", 1)[0]
                # docstrings and help texts may name the built-ins; code may not compare with them
                if NAMES.search(code) and re.search(r"==|!=|\bin\b|\[\s*[\"']|\.get\(", code):
                    found.append(f"{rel}:{n}: {line.strip()}")
    # the converter's by-name table registry (get_table("dit")) is the one lookup by name
    found = [f for f in found if not f.startswith("convert/engine.py")]
    assert not found, found


def test_the_check_catches_a_branch(tmp_path):
    """Negative control of the check above: the pattern sees the kind of line it forbids."""
    line = 'if case.arch == "dit":'
    assert NAMES.search(line) and re.search(r"==|!=|\bin\b", line)


def test_public_api():
    for name in ("Arch", "Variant", "Table", "Rule", "check", "CheckResult", "ParityReport", "ParityError",
                 "Control", "register_arch", "get_arch", "Layout", "InputBundle", "JvpOptions"):
        assert name in parity.__all__ and getattr(parity, name) is not None, name
