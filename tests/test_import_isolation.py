"""Each backend installs and imports without the other framework.

A subprocess installs an import hook that makes the other framework unimportable, then
imports every module of the backend. If a backend module imported the other framework
(even indirectly), the import would fail here.
"""
import pkgutil
import subprocess
import sys

import pytest

import jax_meanflow
import torch_meanflow

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked for the isolation test: ' + name)
sys.meta_path.insert(0, _Block())
import importlib
for mod in {modules!r}:
    importlib.import_module(mod)
print('imported', len({modules!r}), 'modules')
"""


def _modules(pkg):
    names = [pkg.__name__]
    names += [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    return [n for n in names if not n.endswith("__main__")]


@pytest.mark.parametrize(
    "pkg, blocked",
    [(jax_meanflow, ("torch", "functorch")), (torch_meanflow, ("jax", "jaxlib", "flax", "optax", "orbax"))],
    ids=["jax_without_torch", "torch_without_jax"],
)
def test_backend_imports_without_other_framework(pkg, blocked):
    code = _BLOCKER.format(blocked=set(blocked), modules=_modules(pkg))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imported" in proc.stdout


def test_blocker_catches_a_cross_import():
    """Negative control: the same hook does fail a module that imports the blocked framework."""
    code = _BLOCKER.format(blocked={"torch"}, modules=["torch"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "blocked for the isolation test" in proc.stderr


_TORCH, _JAX = ("torch", "functorch"), ("jax", "jaxlib", "flax", "optax", "orbax")


@pytest.mark.parametrize(
    "modules, blocked",
    [(["examples.conv_velocity.flax_net", "examples.scm.jax_objective"], _TORCH),
     (["examples.conv_velocity.torch_net", "examples.scm.torch_objective"], _JAX),
     # an Arch, an Objective, a table and the engine load neither framework (the builders and
     # implementations import them when called)
     (["examples.conv_velocity", "examples.scm", "parity", "parity.convert", "parity.core.arch",
       "parity.core.meanflow"], _TORCH + _JAX)],
    ids=["example_flax_without_torch", "example_torch_without_jax", "example_arch_without_either"],
)
def test_example_imports_without_other_framework(modules, blocked):
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _BLOCKER.format(blocked=set(blocked), modules=modules)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
