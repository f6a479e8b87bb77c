"""Test-wide settings: float64 available in JAX (derivative and parity checks need it)."""
import pytest

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
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
