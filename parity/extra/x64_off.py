"""Float32 parity with the JAX reference run as users run it: in a subprocess with x64 off.

The report process enables `jax_enable_x64` (float64 parity needs it); there float32 arrays
stay float32, but Python scalars and index arrays are 64-bit, so a dtype promotion that
only happens with x64 on could hide. Here the parent makes the weights and the input
bundle, a child process with JAX_ENABLE_X64=0 evaluates the JAX side in float32, and the
parent compares it with the torch side in float32.

    python -m parity.extra.x64_off IN.pkl OUT.pkl    # the child (the parent writes IN.pkl)
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

from parity.core.compare import CheckResult


def _child(src: str, dst: str) -> None:
    import jax

    from parity.core.harness import run_jax

    if jax.config.jax_enable_x64:
        raise SystemExit("parity.extra.x64_off: jax_enable_x64 is on in the child; it must run with x64 off")
    with open(src, "rb") as f:
        job = pickle.load(f)
    out = {}
    for name, (variant, params, bundle, xla_compile) in job.items():
        side = run_jax(variant.arch, variant, params, bundle, "float32", "cpu", xla_compile)
        out[name] = (side.terms, side.grads)
    with open(dst, "wb") as f:
        pickle.dump({"outputs": out, "x64": bool(jax.config.jax_enable_x64)}, f)


def x64_off_checks(variants, *, seed: int = 0, batch: int = 6, xla_compile: str = "fast",
                   timeout_s: float = 600, torch_sides: dict | None = None, own: dict | None = None,
                   rule=None) -> list[CheckResult]:
    """Float32 checks of `variants` (each term and the worst gradient) with the JAX side in
    a child process without x64; the variant name gets " x64 off". `torch_sides`: {variant
    name: the torch SideOutputs of that variant in float32 on CPU with the random weights of
    `seed` and the bundle of `seed` + 1 at `batch`}, reused instead of running torch again;
    `rule`: how float32 is judged (default: calibrated); `own`: {variant name: the x64-on
    reference's own float32 error on the same weights and bundle (parity.core.rule.OwnErrors)},
    the yardstick of the same float32 computation, reused instead of another float64 run."""
    from parity import convert
    from parity.core.harness import SideOutputs, objective_checks, random_params, reference_own_errors, run_torch
    from parity.core.rule import DEFAULT_RULE

    rule = DEFAULT_RULE if rule is None else rule

    job, states = {}, {}
    for v in variants:
        arch = v.arch
        params = random_params(arch, v, seed, "float32")  # what both float32 sides round to anyway
        job[v.name] = (v, params, arch.make_bundle(v, batch, seed + 1), xla_compile)
        if v.name not in (torch_sides or {}):
            states[v.name] = convert.jax_to_torch(params, arch.table, v.model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.pkl"), os.path.join(tmp, "out.pkl")
        with open(src, "wb") as f:
            pickle.dump(job, f)
        env = {**os.environ, "JAX_ENABLE_X64": "0"}
        proc = subprocess.run([sys.executable, "-m", "parity.extra.x64_off", src, dst], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"parity.extra.x64_off child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(dst, "rb") as f:
            child = pickle.load(f)
    if child["x64"]:
        raise RuntimeError("parity.extra.x64_off child ran with jax_enable_x64 on")
    results = []
    for name, (v, params, bundle, _) in job.items():
        ref = SideOutputs(*child["outputs"][name])
        given = (torch_sides or {}).get(name)
        got = given if given is not None else run_torch(v.arch, v, states[name], bundle, "float32", "cpu")
        yardstick = None
        if rule.calibrated:
            yardstick = (own or {}).get(name)
            if yardstick is None:
                yardstick = reference_own_errors(v.arch, v, params, bundle, ref, "cpu", xla_compile)
        for r in objective_checks(v.arch, v, ref, got, "float32", "cpu", own=yardstick, rule=rule):
            r.variant = f"{v.name} x64 off"
            r.info["per_parameter"] = None
            results.append(r)
    return results


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m parity.extra.x64_off IN.pkl OUT.pkl")
    _child(sys.argv[1], sys.argv[2])
