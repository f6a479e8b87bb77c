"""Test-wide settings: float64 available in JAX (derivative and parity checks need it); one
XLA compilation cache for the whole test run."""
import os
import shutil
import tempfile

# Several test workers may share one GPU: JAX must not claim most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# Many tests compile the same programs again, in this process, another worker or a child process
# (the command-line tests): a persistent cache shared by all of them, made for this run and
# removed after it (the workers and children inherit the variable; a user's own setting wins).
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="meanflow-parity-tests-xla-")
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_OWN_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import pytest

pytest_plugins = ["pytester"]  # tests/test_example_arch.py runs a user's test suite with the parity plugin

try:  # jax is optional: the torch-only tests must run without it
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:  # pragma: no cover
    jax = None

try:  # tiny test matrices: a second thread only contends on a loaded 2-core CPU
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    torch = None


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    # `slow` (minutes of CPU, e.g. torch.compile of FLOWER): opt-in with MEANFLOW_SLOW_TESTS=1 or -m slow.
    run_slow = os.environ.get("MEANFLOW_SLOW_TESTS") == "1" or "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow: set MEANFLOW_SLOW_TESTS=1 (or -m slow) to run")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    has_cuda = _has_cuda()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:  # only the process that made it (the workers inherited the variable)
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
