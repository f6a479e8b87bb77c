"""Test-wide settings: float64 available in JAX (derivative and parity checks need it)."""
import os

# Several test workers may share one GPU: JAX must not claim most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

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
