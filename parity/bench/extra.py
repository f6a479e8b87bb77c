"""Benchmarks besides the training step: FLOWER sampling latency and the parity suite's time.

Sampling: `FlowerPolicy.sample_actions` (PyTorch, eager: encoder + transformer) with the
MeanFlow default of 1 network evaluation against FLOWER's 4 steps, and the JAX twin's
jitted `generate` on the transformer alone (conditioning tokens given), median of
repeated calls after a warm-up (JAX: the first call compiles, reported separately).

Parity suite: `python -m parity` (or any argument list) run as a fresh subprocess, as a
user runs it: wall time, the children's CPU time, exit status; optional environment
variables measure proposals such as JAX's persistent compilation cache.
"""
from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable


from parity.bench.cases import SIZES
from parity.bench.measure import load_average

__all__ = ["sampling_latency", "parity_suite_time", "PARITY_SETUPS"]


def _median_ms(fn: Callable[[], None], calls: int, warmup: int = 2) -> tuple[float, float]:
    """(first call seconds, median ms of `calls` later calls)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, 1e3 * statistics.median(times)


def sampling_latency(size: str, device: str, batches=(1, 32), steps=(1, 4), tokens: int = 64,
                     calls: int = 20, backends=("torch", "jax"), log=print) -> list[dict]:
    """Latency of sampling, per backend, batch size and number of steps, with the size's own
    sampler (`BenchSpec.sampler`)."""
    if not SIZES[size].sampling:
        raise ValueError(f"size {size!r} declares no sampler (BenchSpec.sampler); sampled sizes: "
                         f"{', '.join(n for n, s in SIZES.items() if s.sampling)}")
    spec = SIZES[size].spec
    rows = []
    for batch in batches:
        for backend in backends:
            for n in steps:
                run = spec.sampler(backend, spec.model_cfg, batch, device, n, tokens)
                first, ms = _median_ms(run, calls)
                what = "FlowerPolicy.sample_actions (eager)" if backend == "torch" else "jit generate (transformer)"
                rows.append({"size": size, "backend": backend, "what": what, "batch": batch, "num_steps": n,
                             "median_ms": ms, "first_call_s": first, "calls": calls})
                log(f"  sampling {size} {backend:5s} batch {batch:3d} {n} step(s): {ms:8.2f} ms")
    return rows


# name -> (extra arguments, extra environment) of the `python -m parity` subprocess
# ({cache}: a fresh JAX persistent-cache directory per benchmark run; a "warm" setup runs
# after its "cold" one). "default" is what `make parity` runs (XLA:CPU fast compile).
_CACHE = {"JAX_COMPILATION_CACHE_DIR": "{cache}", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
_FULL = ("--xla-compile", "full")
PARITY_SETUPS = {
    "default": ((), {}),
    "xla full compile": (_FULL, {}),
    "cache cold": ((), _CACHE),
    "cache warm": ((), _CACHE),
    "full+cache cold": (_FULL, {**_CACHE, "JAX_COMPILATION_CACHE_DIR": "{cache}-full"}),
    "full+cache warm": (_FULL, {**_CACHE, "JAX_COMPILATION_CACHE_DIR": "{cache}-full"}),
}


def parity_suite_time(setups=("default",), args=(), base_env=None, timeout: float = 1800,
                      log=print) -> list[dict]:
    """Wall and CPU time of `python -m parity *args` in a fresh process, per setup, in the
    environment `base_env` (default: this process's) plus the setup's variables."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="meanflow-bench-") as tmp:
        cache = os.path.join(tmp, "jax-cache")
        for name in setups:
            if name not in PARITY_SETUPS:
                raise KeyError(f"unknown parity setup {name!r}; available: {', '.join(PARITY_SETUPS)}")
            setup_args, setup_env = PARITY_SETUPS[name]
            extra = {k: v.format(cache=cache) for k, v in setup_env.items()}
            env = {**dict(os.environ if base_env is None else base_env), **extra}
            cmd = [sys.executable, "-m", "parity", *args, *setup_args, "--json", os.path.join(tmp, "report.json")]
            load_before = load_average()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            found = re.search(r"parity suite: (.*) in ([0-9.]+) s", proc.stdout)
            row = {"setup": name, "command": " ".join(["python -m parity", *args, *setup_args]), "env": extra,
                   "wall_s": wall, "cpu_s": cpu, "returncode": proc.returncode,
                   "passed": proc.returncode == 0, "suite": found.group(1) if found else None,
                   "reported_s": float(found.group(2)) if found else None,
                   "load_before": load_before, "load_after": load_average()}
            if proc.returncode != 0:
                row["stderr_tail"] = proc.stderr[-2000:]
            rows.append(row)
            log(f"  parity suite [{name}]: {wall:.1f} s wall, {cpu:.1f} s CPU, "
                f"{'passed' if row['passed'] else 'FAILED'} (load {row['load_before']})")
    return rows
