"""Float32 parity with the JAX reference run as users run it: in a subprocess with x64 off.

The report process enables `jax_enable_x64` (float64 parity needs it); there float32 arrays
stay float32, but Python scalars and index arrays are 64-bit, so a dtype promotion that
only happens with x64 on could hide. Here a child process with JAX_ENABLE_X64=0 draws the
random float32 weights of `seed` (NumPy draws: the very weights of the parent's run) and
evaluates the JAX side in float32 on the parent's input bundle, and the parent compares it
with the torch side in float32.

The child can run while the parent does something else (`X64OffRun` starts it, `outputs()`
collects it): `X64OffCheck` starts it as the suite begins and waits for it once the first
float32 variant's executables are compiled, so the two compile side by side; the torch side
of that variant's own run is compared with it. With a negative control the torch side of the
suite's runs carries the bug, so the check runs its own clean torch side at the end.

    python -m parity.checks.x64_off IN.pkl OUT.pkl    # the child (the parent writes IN.pkl)
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

from parity.checks.base import Check, first_per_arch
from parity.core.compare import CheckResult


def _child(src: str, dst: str) -> None:
    import jax
    import numpy as np

    from jax_meanflow.params import random_arrays
    from parity.core.harness import param_shapes, run_jax

    if jax.config.jax_enable_x64:
        raise SystemExit("parity.checks.x64_off: jax_enable_x64 is on in the child; it must run with x64 off")
    with open(src, "rb") as f:
        job = pickle.load(f)
    out = {}
    for name in list(job):
        variant, seed, bundle, xla_compile = job.pop(name)
        # harness.random_params would switch x64 on; the draw itself is NumPy's, the same here
        params = random_arrays(param_shapes(variant.arch, variant.model_cfg), seed, dtype=np.float32)
        # the weights are given up as they reach the device: one tree on the host at a time
        side = run_jax(variant.arch, variant, params, bundle, "float32", "cpu", xla_compile, consume=True)
        del params
        out[name] = (side.terms, side.grads)
        del side
    with open(dst, "wb") as f:
        # protocol 5 writes each array's buffer as it is; 4 would memoise a bytes copy of every
        # array until the dump ends (a second tree in memory)
        pickle.dump({"outputs": out, "x64": bool(jax.config.jax_enable_x64)}, f, protocol=5)


class X64OffRun:
    """The child process of `variants` (float32 JAX with x64 off, random weights of `seed`,
    the bundle of `seed` + 1 at `batch`), started on construction; `outputs()` waits for
    it and returns {variant name: parity.core.harness.SideOutputs}."""

    def __init__(self, variants, *, seed: int = 0, batch: int = 6, xla_compile: str = "fast",
                 timeout_s: float = 600):
        self.variants = list(variants)
        self.seed, self.batch, self.xla_compile = seed, batch, xla_compile
        from parity.core.harness import variant_bundle

        self.bundles = {v.name: variant_bundle(v, batch, seed) for v in self.variants}
        self.timeout_s = timeout_s
        self._tmp = tempfile.TemporaryDirectory()
        src, self._dst = os.path.join(self._tmp.name, "in.pkl"), os.path.join(self._tmp.name, "out.pkl")
        with open(src, "wb") as f:
            pickle.dump({v.name: (v, seed, self.bundles[v.name], xla_compile) for v in self.variants}, f)
        env = {**os.environ, "JAX_ENABLE_X64": "0"}
        # stderr to a file, not a pipe: a pipe nobody reads while the parent works would fill and stall the child
        self._err = open(os.path.join(self._tmp.name, "stderr.txt"), "w+")
        self._proc = subprocess.Popen([sys.executable, "-m", "parity.checks.x64_off", src, self._dst], env=env,
                                      stdout=subprocess.DEVNULL, stderr=self._err)
        self._outputs = None

    def wait(self) -> None:
        """Wait for the child to finish (its outputs stay on disk until `outputs()`)."""
        if self._proc is None:
            return
        try:
            code = self._proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            raise RuntimeError(f"parity.checks.x64_off child still running after {self.timeout_s:g} s: killed") from None
        self._proc = None
        if code != 0:
            self._err.seek(0)
            err = self._err.read()[-4000:]
            self.close()
            raise RuntimeError(f"parity.checks.x64_off child failed (exit {code}):\n{err}")

    def outputs(self) -> dict:
        from parity.core.harness import SideOutputs

        if self._outputs is None:
            self.wait()
            with open(self._dst, "rb") as f:
                child = pickle.load(f)
            self.close()
            if child["x64"]:
                raise RuntimeError("parity.checks.x64_off child ran with jax_enable_x64 on")
            self._outputs = {name: SideOutputs(*out) for name, out in child["outputs"].items()}
        return self._outputs

    def close(self) -> None:
        """Kill the child if it still runs and remove its files."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._err.close()
        self._tmp.cleanup()


def x64_off_checks(variants, *, seed: int = 0, batch: int = 6, xla_compile: str = "fast",
                   timeout_s: float = 600, torch_sides: dict | None = None, own: dict | None = None,
                   rule=None, run: X64OffRun | None = None) -> list[CheckResult]:
    """Float32 checks of `variants` (each term and the worst gradient) with the JAX side in
    a child process without x64; the variant name gets " x64 off". `torch_sides`: {variant
    name: the torch SideOutputs of that variant in float32 on CPU with the random weights of
    `seed` and the bundle of `seed` + 1 at `batch`}, reused instead of running torch again;
    `rule`: how float32 is judged (default: calibrated); `own`: {variant name: the x64-on
    reference's own float32 error on the same weights and bundle (parity.core.rule.OwnErrors)},
    the yardstick of the same float32 computation, reused instead of another float64 run;
    `run`: the child already started for these variants or more (`X64OffRun`), else one is
    started."""
    from parity import convert
    from parity.core.harness import objective_checks, random_params, reference_own_errors, run_torch
    from parity.core.rule import DEFAULT_RULE

    rule = DEFAULT_RULE if rule is None else rule
    if run is None:
        run = X64OffRun(variants, seed=seed, batch=batch, xla_compile=xla_compile, timeout_s=timeout_s)
    if (run.seed, run.batch, run.xla_compile) != (seed, batch, xla_compile):
        raise ValueError(f"x64_off_checks: the child ran seed {run.seed}, batch {run.batch}, {run.xla_compile} "
                         f"compile, not seed {seed}, batch {batch}, {xla_compile}")
    missing = [v.name for v in variants if v.name not in run.bundles]
    if missing:
        raise ValueError(f"x64_off_checks: the child did not run {missing} (it ran {list(run.bundles)})")
    outputs = run.outputs()
    results = []
    for v in variants:
        bundle, ref = run.bundles[v.name], outputs.pop(v.name)
        got = (torch_sides or {}).get(v.name)
        yardstick = (own or {}).get(v.name) if rule.calibrated else None
        params = None
        if got is None or (rule.calibrated and yardstick is None):
            params = random_params(v.arch, v, seed, "float32")  # what both float32 sides round to anyway
        if got is None:
            got = run_torch(v.arch, v, convert.jax_to_torch(params, v.arch.table, v.model_cfg), bundle, "float32",
                            "cpu")
        if rule.calibrated and yardstick is None:
            yardstick = reference_own_errors(v.arch, v, params, bundle, ref, "cpu", xla_compile)
        del params
        for r in objective_checks(v.arch, v, ref, got, "float32", "cpu", own=yardstick, rule=rule):
            r.variant = f"{v.name} x64 off"
            r.info["per_parameter"] = None
            results.append(r)
        del ref, got
    return results


class X64OffCheck(Check):
    """"x64off": float32 on CPU with random weights only (given weights are the caller's and
    may not pickle). Owns its child from start to end: started in `prepare` (beside the first
    float32 variant's compile), compared in `check` with that variant's torch side, reported
    in `finish`, killed in `close`."""

    name = "x64off"

    def prepare(self, variants, ctx) -> None:
        super().prepare(variants, ctx)
        self.firsts = first_per_arch(variants)
        self.applies = ctx.random_weights and "float32" in ctx.dtypes and "cpu" in ctx.devices
        self.rows: list[CheckResult] = []
        self.run = None
        if self.applies and ctx.control is None:
            from parity.core.harness import compile_variant

            self.run = X64OffRun(self.firsts, seed=ctx.seed, batch=ctx.batch, xla_compile=ctx.xla_compile)
            # the parent compiles while the child runs; then one of them at a time holds weights
            compile_variant(self.firsts[0], "float32", "cpu", batch=ctx.batch, seed=ctx.seed, rule=ctx.rule,
                            xla_compile=ctx.xla_compile)
            self.run.wait()

    def check(self, variant, dtype: str, device: str, sides) -> list[CheckResult]:
        if self.run is not None and (dtype, device) == ("float32", "cpu") and any(v is variant for v in self.firsts):
            self.rows += x64_off_checks([variant], seed=self.ctx.seed, batch=self.ctx.batch,
                                        xla_compile=self.ctx.xla_compile, torch_sides={variant.name: sides.torch},
                                        own={variant.name: sides.own}, rule=self.ctx.rule, run=self.run)
        return []

    def finish(self) -> list[CheckResult]:
        if self.applies and self.run is None:  # a control's torch side is not the clean one: run it here
            self.rows = x64_off_checks(self.firsts, seed=self.ctx.seed, batch=self.ctx.batch,
                                       xla_compile=self.ctx.xla_compile, rule=self.ctx.rule)
        return self.rows

    def close(self) -> None:
        if self.run is not None:
            self.run.close()
            self.run = None


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m parity.checks.x64_off IN.pkl OUT.pkl")
    _child(sys.argv[1], sys.argv[2])
