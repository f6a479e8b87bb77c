"""Pinning and reporting the float32 precision settings of both frameworks.

True float32 on GPU needs both sides pinned: JAX matmul precision
"highest"; PyTorch TF32 off for matmuls AND for cuDNN convolutions (cuDNN's TF32 is on
by default). `pinned_precision(False)` restores each framework's defaults, which the
report uses to measure the TF32 drift on GPU.

Also the XLA compile mode of the JAX reference. On CPU the parity suite compiles each
variant's loss-and-gradient once and runs it once, so LLVM's optimisation passes cost far
more than they save: `XLA_COMPILE["fast"]` compiles ~4x faster (14 executables: 79 s ->
20 s on 2 cores) and changes the JAX outputs by rounding only (measured against "full",
the optimised executable the trainer runs: float32 <= 2.8e-6, float64 <= 1.0e-14 relative;
docs/BENCHMARKS.md). "full" is one flag away (`python -m parity --xla-compile full`).
"""
from __future__ import annotations

import contextlib
import platform

import jax
import numpy as np
import torch


# XLA DebugOptions passed per executable (jax.jit(compiler_options=...)), CPU only:
# LLVM -O0 and the legacy loop emitter instead of the MLIR fusion emitters.
XLA_COMPILE = {
    "fast": {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False},
    "full": None,
}


def jax_compiler_options(mode: str, device: str) -> dict | None:
    """The `compiler_options` of the JAX reference's executables for `mode` on `device`
    (GPU always compiles in full: the options above are CPU code-generation settings)."""
    if mode not in XLA_COMPILE:
        raise ValueError(f"unknown XLA compile mode {mode!r}; use one of {sorted(XLA_COMPILE)}")
    return XLA_COMPILE[mode] if device == "cpu" else None


def precision_settings() -> dict:
    """The settings in force now, as recorded in every report."""
    return {
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "torch_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "torch_cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def versions() -> dict:
    import flax

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return out


@contextlib.contextmanager
def pinned_precision(strict: bool = True):
    """Within the block: strict float32 (strict=True) or the frameworks' defaults (False)."""
    saved = (
        jax.config.jax_default_matmul_precision,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    try:
        if strict:
            jax.config.update("jax_default_matmul_precision", "highest")
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
        else:
            jax.config.update("jax_default_matmul_precision", None)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.set_float32_matmul_precision("high")
        yield precision_settings()
    finally:
        jax.config.update("jax_default_matmul_precision", saved[0])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]
        torch.backends.cudnn.allow_tf32 = saved[2]
        torch.set_float32_matmul_precision(saved[3])
