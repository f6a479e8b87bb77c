"""The front door tells the truth: every command the README and docs/ show names a module that
exists and only options its command line has, every file path they name exists, every `make`
target they name is in the Makefile. (Each command's own --help is the authority.)"""
from __future__ import annotations

import contextlib
import glob
import importlib
import io
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# `python -m MODULE ARGS` and `torchrun ... -m MODULE ARGS`, up to the end of the code span or line
COMMAND = re.compile(r"(?:python3?|torchrun[^`\n]*?)\s+-m\s+([A-Za-z_][\w.]*)([^`\n|]*)")
PATH = re.compile(r"(?<![\w/.-])((?:parity|meanflow_common|jax_meanflow|torch_meanflow|tests|examples|docs)"
                  r"/[\w/.-]*\w\.(?:py|md|png|json))")
MAKE = re.compile(r"(?:^|`)make ([a-z][\w-]*)", re.M)
# commands shown as what they replaced, or programs outside this project
FOREIGN = {"venv", "pip", "pytest"}


def _text(rel: str) -> str:
    with open(os.path.join(ROOT, rel)) as f:
        return f.read().replace("\\\n", " ")  # shell line continuations


def commands() -> list[tuple[str, str, list[str]]]:
    """(doc, module, argv) of every command shown."""
    out = []
    for rel in DOCS:
        for m in COMMAND.finditer(_text(rel)):
            module = m.group(1).rstrip(".")
            if module in FOREIGN:
                continue
            try:
                argv = shlex.split(m.group(2).split("#", 1)[0], posix=True)
            except ValueError:  # an unbalanced quote in prose: take the words
                argv = m.group(2).split()
            out.append((rel, module, argv))
    return out


def _entry(module: str):
    """The `main(argv)` a `python -m module` runs."""
    # a package's __main__ runs on import; the module it calls instead
    packages = {"parity": "parity.cli", "parity.bench": "parity.bench.run", "parity.train_parity": "parity.train_parity.run"}
    return importlib.import_module(packages.get(module, module)).main


def _subcommand(module: str, argv: list[str]) -> list[str]:
    """The leading words that pick a subcommand of `python -m parity`."""
    if module not in ("parity", "parity.cli"):
        return []
    from parity.cli import DELEGATED

    if argv and (argv[0] in DELEGATED or argv[0] in ("convert", "debug")):
        return [argv[0]]
    return []


_HELP: dict = {}


def help_text(module: str, sub: list[str]) -> str:
    key = (module, tuple(sub))
    if key not in _HELP:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
            with pytest.raises(SystemExit):
                _entry(module)([*sub, "--help"])
        _HELP[key] = buf.getvalue()
    return _HELP[key]


def test_the_docs_show_commands():
    assert len(commands()) > 40


def test_every_module_shown_exists():
    missing = sorted({f"{doc}: python -m {module}" for doc, module, _ in commands()
                      if importlib.util.find_spec(module) is None})
    assert not missing, missing


def test_every_option_shown_is_an_option_of_its_command():
    wrong = []
    for doc, module, argv in commands():
        sub = _subcommand(module, argv)
        options = {a.split("=", 1)[0] for a in argv if re.fullmatch(r"--[a-z][\w-]*(=.*)?", a)}
        if not options:
            continue
        text = help_text(module, sub)
        known = set(re.findall(r"--[a-z][\w-]*", text))
        wrong += [f"{doc}: python -m {module} {' '.join(sub)} {o}" for o in sorted(options - known)]
    assert not wrong, wrong


def test_every_path_shown_exists():
    missing = []
    for rel in DOCS:
        for m in PATH.finditer(_text(rel)):
            path = m.group(1)
            # a path written relative to the doc's own folder (docs/X.md names docs/bench/...)
            if not (os.path.exists(os.path.join(ROOT, path)) or os.path.exists(os.path.join(ROOT, "docs", path))):
                missing.append(f"{rel}: {path}")
    assert not missing, missing


def test_every_make_target_shown_exists():
    with open(os.path.join(ROOT, "Makefile")) as f:
        targets = set(re.findall(r"^([a-z][\w-]*):", f.read(), re.M))
    shown = {(rel, t) for rel in DOCS for t in MAKE.findall(_text(rel))}
    missing = sorted(f"{rel}: make {t}" for rel, t in shown if t not in targets)
    assert not missing, missing


def test_negative_control_a_stale_option_is_caught(monkeypatch):
    """The checks above see the kind of claim they forbid: an option that is gone."""
    doc = "x.md"
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    monkeypatch.setattr(sys.modules[__name__], "_text",
                        lambda rel: "`python -m parity --dit-preset tiny` and `python -m parity.nope`")
    with pytest.raises(AssertionError, match="--dit-preset"):
        test_every_option_shown_is_an_option_of_its_command()
    with pytest.raises(AssertionError, match="parity.nope"):
        test_every_module_shown_exists()
