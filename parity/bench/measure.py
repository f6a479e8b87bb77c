"""Timing, memory and environment records for `python -m parity.bench`.

Timing. Every runner is one full training step (loss, backward, optimiser, EMA), made
synchronous (`block_until_ready` / `torch.cuda.synchronize`). The runners of one case are
warmed up (first call = tracing + compilation + one step, reported separately), then timed
in interleaved rounds: round i runs step i of every runner in turn, so a load spike on a
shared machine hits all of them alike and the ratios stay meaningful. Each step records
wall time (`perf_counter`) and process CPU time (`process_time`, all threads); the table
reports medians.

Peak memory, measured in a separate pass after the timing:
- CPU: the resident-set growth during one step. Freed heap pages are first handed back
  with `malloc_trim(0)` (glibc), then a sampling thread reads /proc/self/statm every
  0.2 ms; peak minus the baseline is the step's transient memory. (tracemalloc sees
  neither torch's nor XLA's allocations.)
- CUDA, torch: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated
  before the step (parameters, optimiser state).
- CUDA, JAX: the device's `peak_bytes_in_use` (a lifetime maximum, so read it in order).
Runners may add exact numbers of their own (`Runner.memory_info`): XLA's compiled memory
analysis for JAX steps, the bytes torch autograd saves for the backward for torch steps.
"""
from __future__ import annotations

import ctypes
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

__all__ = ["Runner", "time_interleaved", "peak_step_memory", "load_average", "environment"]


@dataclass
class Runner:
    """One benchmarked training step.

    name: table label; backend "jax" | "torch"; mode "jit" | "eager" | "compile";
    objective "fm" | "mf"; variant: what differs from the default path ("" = default);
    step(): one synchronous training step; memory_info(): extra exact numbers (bytes).
    """

    name: str
    backend: str
    mode: str
    objective: str
    step: Callable[[], None]
    variant: str = ""
    memory_info: Optional[Callable[[], dict]] = None
    result: dict = field(default_factory=dict)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _median_ms(xs: list[float]) -> float:
    return 1e3 * statistics.median(xs)


def time_interleaved(runners: list[Runner], steps: int, warmup: int, log=print) -> list[Runner]:
    """Warm up every runner, then time `steps` interleaved rounds; returns the runners that
    ran (a runner whose warm-up raises is reported in `result["error"]` and left out)."""
    alive = []
    for r in runners:
        calls = []
        try:
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                r.step()
                calls.append(time.perf_counter() - t0)
        except Exception as err:  # noqa: BLE001 - a failing variant is reported, the run goes on
            r.result["error"] = f"{type(err).__name__}: {err}"
            log(f"  {r.name}: failed during warm-up ({r.result['error'][:200]})")
            continue
        r.result["first_call_s"] = calls[0]
        r.result["warmup_calls_s"] = calls
        alive.append(r)
    wall = {id(r): [] for r in alive}
    cpu = {id(r): [] for r in alive}
    for _ in range(steps):
        for r in alive:
            w0, c0 = time.perf_counter(), time.process_time()
            r.step()
            wall[id(r)].append(time.perf_counter() - w0)
            cpu[id(r)].append(time.process_time() - c0)
    for r in alive:
        w, c = wall[id(r)], cpu[id(r)]
        r.result.update(
            wall_ms=_median_ms(w), cpu_ms=_median_ms(c), wall_min_ms=1e3 * min(w),
            wall_all_ms=[round(1e3 * x, 3) for x in w], steps=len(w),
        )
        # Compilation (or eager warm-up) beyond one ordinary step.
        r.result["compile_s"] = max(0.0, r.result["first_call_s"] - r.result["wall_ms"] / 1e3)
    return alive


# ----------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


def _malloc_trim() -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def tree_rss_bytes(root: int) -> int:
    """The summed resident set of process `root` and all its descendants, now (Linux /proc)."""
    parents: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # the command name (field 2) may hold spaces: fields after its ")"
                    fields = f.read().rsplit(")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class RssSampler(threading.Thread):
    """Samples `measure()` (default: this process's resident set in bytes) every `interval`
    seconds in a thread from construction until `stop()`, which returns the largest value."""

    def __init__(self, interval: float, measure: Callable[[], Optional[int]] | None = None):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0, threading.Event()
        self.measure = _rss_bytes if measure is None else measure
        self.start()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.measure() or 0)
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def _cpu_peak(step: Callable[[], None]) -> dict:
    trimmed = _malloc_trim()
    base = _rss_bytes()
    if base is None:
        return {"method": "unavailable (no /proc/self/statm)"}
    sampler = RssSampler(2e-4)
    try:
        step()
    finally:
        sampler.stop()
    peak = max(sampler.peak, _rss_bytes() or 0)
    return {"peak_bytes": max(0, peak - base), "baseline_rss_bytes": base,
            "method": "rss growth during one step" + (" after malloc_trim" if trimmed else "")}


def _torch_cuda_peak(step: Callable[[], None]) -> dict:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return {"peak_bytes": torch.cuda.max_memory_allocated() - base, "baseline_bytes": base,
            "method": "torch.cuda.max_memory_allocated - allocated before the step"}


def _jax_gpu_peak(step: Callable[[], None]) -> dict:
    import jax

    dev = jax.devices()[0]
    step()
    stats = dev.memory_stats() or {}
    return {"peak_bytes": stats.get("peak_bytes_in_use"), "bytes_in_use": stats.get("bytes_in_use"),
            "method": "device peak_bytes_in_use (lifetime maximum)"}


def peak_step_memory(r: Runner, device: str) -> dict:
    """Peak memory of one step of `r` (see the module doc), plus `r.memory_info()`."""
    if device == "cuda":
        out = _torch_cuda_peak(r.step) if r.backend == "torch" else _jax_gpu_peak(r.step)
    else:
        out = _cpu_peak(r.step)
    if r.memory_info is not None:
        out.update(r.memory_info())
    return out


# ----------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _inductor_cache() -> dict:
    import getpass
    import tempfile

    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    return {"path": path, "existed": os.path.isdir(path)}


def environment(device: str) -> dict:
    """Versions, hardware, threads, precision settings and the load, for the record."""
    import jax
    import numpy as np
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "load_average": load_average(),
        # torch.compile reuses compiled kernels from this directory: warm-up times of the
        # compiled runners are cold-compile times only when it did not exist before.
        "torchinductor_cache_dir": _inductor_cache(),
    }
    for mod in ("flax", "optax"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    if device == "cuda":
        env.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            tf32_cudnn=torch.backends.cudnn.allow_tf32,
        )
    try:
        from importlib.metadata import version

        env["jvp_flash_attention"] = version("jvp_flash_attention")
    except Exception:  # noqa: BLE001 - not installed (or unreadable metadata)
        env["jvp_flash_attention"] = None
    return env
