"""`python -m parity gpu-check` (`make gpu-check`): every GPU measurement in one prepared run.

    make gpu-check                         # with the project's .venv
    make gpu-check PY=python3              # with the system python (no .venv on the GPU machine)
    python -m parity gpu-check --out reports/gpu_check [--parts suite,bench] [--scale 0.5]

Parts, each a child process with its own time budget (a part that overruns is stopped and
reported as timed out; the next one still runs), together under 5 minutes on one H100/H200:

- `suite`: the parity report's cuda rows (every default variant, float32 and float64, at the
  CPU tolerances with float32 pinned to strict precision), then the TF32 drift (the frameworks'
  default precision, reported, never failed);
- `dit-b4` and `flower-default`: the float32 check of the official DiT-B/4 and of FLOWER's
  default network (batch 2, one variant each), with the time each took;
- `bench`: the benchmark's GPU table (math attention under the JVP against the fused JVP
  attention kernel when `jvp_flash_attention` is installed);
- `rule-xl2`: the calibrated float32 rule at DiT-XL/2, the honest port and every negative
  control (`python -m parity rule-sizes`).

It writes ONE `gpu_check.json` and ONE `gpu_check.md` in `--out`: the device, the torch / jax /
flax / CUDA / cuDNN versions, the precision settings in force, and per part its command, status
(ran, failed, timed out, skipped) with the reason, wall time and summary. Without a CUDA device
visible to both torch and jax every part is skipped, each saying why, the files are still
written and the exit status is 0. Each part's command line is checked against its own parser
first, so a dry run on CPU catches a stale flag.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

# (name, what, budget in seconds, command line after `python -m`); {out} is the part's JSON path.
PARTS = (
    ("suite", "parity report, cuda rows: every default variant, float32 (pinned) + float64, then the TF32 drift "
              "and the bf16-mixed rows",
     100, "parity --device cuda --dtype float32,float64 --checks none --mixed --json {out}"),
    ("dit-b4", "float32 check, official DiT-B/4, batch 2, variant 'cfg kappa>0'",
     45, "parity --arch dit --preset DiT-B/4 --dtype float32 --batch 2 --variant 'cfg kappa>0' --device cuda "
         "--checks none --json {out}"),
    ("flower-default", "float32 check, FLOWER default (width 1024, 18 layers), batch 2, variant 'adaln rope'",
     45, "parity --arch flower --preset default --dtype float32 --batch 2 --variant 'adaln rope' --device cuda "
         "--checks none --json {out}"),
    # eager runners only: torch.compile of one large network alone can take a minute
    ("bench", "benchmark GPU table, DiT-B/4 and FLOWER default, eager (math vs fused JVP attention)",
     60, "parity.bench --device cuda --sizes dit-b4,flower-default --no-compile --steps 5 --warmup 1 "
         "--parity-suite '' --sampling-batches 1 --json {out}"),
    # the calibrated rule and every control at DiT-XL/2, the largest size (830 s and 21.6 GB on 2 CPU cores)
    ("rule-xl2", "the calibrated float32 rule at DiT-XL/2 (batch 3): honest port and every negative control",
     50, "parity rule-sizes --sizes dit:DiT-XL/2 --batch 3 --device cuda --json {out}"),
)
TOTAL_LIMIT_S = 300


def gpu_visible() -> tuple[bool, str]:
    """(whether torch and jax both see a CUDA GPU, the reason when they do not)."""
    import jax
    import torch

    reasons = []
    if not torch.cuda.is_available():
        reasons.append(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False; "
                       f"built for CUDA {torch.version.cuda})")
    platforms = sorted({d.platform for d in jax.devices()})
    if "gpu" not in platforms:
        reasons.append(f"jax {jax.__version__} has no GPU backend (devices: {', '.join(platforms)})")
    return not reasons, "; ".join(reasons)


def environment() -> dict:
    """Device, versions and every precision setting in force in this process (the children
    inherit the environment variables; each part also records the settings it ran with)."""
    import flax
    import jax
    import torch

    from parity.core.precision import precision_settings, versions

    env = versions()
    env.update(flax=flax.__version__, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
               jaxlib=getattr(__import__("jaxlib"), "__version__", None))
    try:
        import jax_cuda12_plugin as plugin  # jax[cuda12]'s CUDA plugin: its version names its CUDA build
        env["jax_cuda_plugin"] = getattr(plugin, "__version__", "present")
    except ImportError:
        env["jax_cuda_plugin"] = None
    env["precision"] = precision_settings()
    env["env_vars"] = {k: os.environ.get(k) for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                                      "NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES",
                                                      "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE")}
    return env


def _validate(argv: list[str]) -> None:
    """Parse a part's command line with its own CLI's parser and resolve the parity runs'
    variants (SystemExit on a stale flag, preset or variant name)."""
    if argv[:2] == ["parity", "rule-sizes"]:
        from parity.bench.rule_sizes import build_parser
        from parity.archs.registry import resolve_variants

        for spec in build_parser().parse_args(argv[2:]).sizes.split(","):
            arch, _, preset = spec.partition(":")
            try:
                resolve_variants(arch, preset or None)
            except KeyError as err:
                raise SystemExit(f"rule-sizes part: {err.args[0]}") from err
    elif argv[0] == "parity":
        from parity.archs.registry import select_variants
        from parity.suite.command import build_parser

        args = build_parser().parse_args(argv[1:])
        try:
            select_variants(args.arch, args.preset, args.set, args.variant)
        except KeyError as err:
            raise SystemExit(f"parity part: {err.args[0]}") from err
    else:
        from parity.bench.cases import SIZES
        from parity.bench.run import build_parser

        sizes = build_parser().parse_args(argv[1:]).sizes or ""
        if bad := [x for x in sizes.split(",") if x and x not in SIZES]:
            raise SystemExit(f"bench part: unknown size {bad[0]!r}; available: {', '.join(SIZES)}")


def _summarise(name: str, payload: dict) -> dict:
    """The headline figures of a part's JSON."""
    if name == "bench":
        return {"cases": [{"name": c["name"], "runners": {r["name"]: r.get("wall_ms", r.get("error"))
                                                            for r in c.get("runners", [])}}
                          for c in payload.get("cases", [])], "elapsed_s": payload.get("elapsed_s")}
    if "sizes" in payload:  # rule-sizes
        return {"sizes": [{"size": f"{r['arch']} {r['preset']}", "honest_passed": all(x["passed"] for x in r["honest"]),
                           "controls_missed": [c["name"] for c in r["controls"] if not c["failed"]],
                           "seconds": r["seconds"].get("total")} for r in payload["sizes"]]}
    checks = payload.get("checks", [])
    strict = [c for c in checks if not c.get("info", {}).get("informational")]

    def worst(suffix):
        out = {}
        for c in checks:
            q = c["quantity"] if c["quantity"] in ("u", "du_dt", "loss") else "grad" if "grad" in c["quantity"] else None
            if c["variant"].endswith(suffix) and q and c["max_rel"] != "nan":
                out[q] = max(out.get(q, 0.0), float(c["max_rel"]))
        return out or None

    return {"passed": payload.get("passed"), "checks": len(strict), "failed": [
        f"{c['arch']} {c['variant']} {c['dtype']} {c['quantity']} rel {c['max_rel']} > {c['tol']}"
        for c in strict if not c["passed"]], "tf32_drift_worst_rel": worst(" TF32"),
            "bf16_mixed_worst_rel": worst(" bf16-mixed"),
            "elapsed_s": payload.get("meta", {}).get("elapsed_s"), "precision": payload.get("meta", {}).get("precision")}


def run_part(name: str, command: str, budget: float, workdir: str, python: str) -> dict:
    """Run `python -m <command>` with the budget; its JSON and log go to `workdir`."""
    out = os.path.join(workdir, f"{name}.json")
    argv = [a.replace("{out}", out) for a in shlex.split(command)]
    cmd = [python, "-m", *argv]
    log = os.path.join(workdir, f"{name}.log")
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")  # torch and jax share the GPU
    start = time.time()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=budget).returncode
        except subprocess.TimeoutExpired:
            rc = None
    rec = {"command": shlex.join(cmd), "budget_s": budget, "wall_s": round(time.time() - start, 1), "log": log}
    with open(log) as f:
        rec["log_tail"] = f.read()[-1500:]
    if rc is None:
        rec.update(status="timed out", reason=f"stopped after its budget of {budget:.0f} s")
    elif not os.path.exists(out):
        rec.update(status="failed", reason=f"exit status {rc}, no JSON written (see the log)")
    else:
        with open(out) as f:
            rec["summary"] = _summarise(name, json.load(f))
        # the parity report exits 1 when a check fails: a finding, not a crash
        rec.update(status="ran", reason="" if rc == 0 else f"exit status {rc}")
    return rec


def markdown(report: dict) -> str:
    env = report["environment"]
    out = ["# GPU check", "",
           f"Device: {env.get('cuda_device') or 'none'}; torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN "
           f"{env.get('cudnn')}), jax {env['jax']} (backend {env['jax_backend']}), flax {env['flax']}, "
           f"python {env['python']}.", "",
           "Precision in force: " + ", ".join(f"{k}={v}" for k, v in env["precision"].items()) + ".", "",
           "| part | status | wall s | budget s | result |", "|---|---|---:|---:|---|"]
    for p in report["parts"]:
        s = p.get("summary") or {}
        if "cases" in s:
            res = "; ".join(f"{c['name']}: " + ", ".join(f"{k} {v if isinstance(v, str) else f'{v:.1f} ms'}"
                                                        for k, v in c["runners"].items()) for c in s["cases"])
        elif s:
            res = (f"{s['checks']} checks, {len(s['failed'])} failed" + (f" ({'; '.join(s['failed'][:3])})"
                                                                         if s["failed"] else "")
                   + (f"; TF32 drift worst rel {s['tf32_drift_worst_rel']}" if s.get("tf32_drift_worst_rel") else "")
                   + (f"; bf16-mixed worst rel {s['bf16_mixed_worst_rel']}" if s.get("bf16_mixed_worst_rel") else ""))
        else:
            res = ""
        out.append(f"| {p['name']} | {p['status']}{': ' + p['reason'] if p['reason'] else ''} | "
                   f"{p.get('wall_s', '-')} | {p['budget_s']:.0f} | {res} |")
    out += ["", f"Total {report['elapsed_s']:.1f} s (limit {TOTAL_LIMIT_S} s)."]
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/gpu_check", help="folder for gpu_check.json/.md and the parts' logs")
    p.add_argument("--parts", default=",".join(n for n, *_ in PARTS), help="comma list of the parts to run")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every part's time budget (e.g. 0.5)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the parts (default: this one)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    known = {n for n, *_ in PARTS}
    if bad := [n for n in names if n not in known]:
        raise SystemExit(f"--parts: unknown part {bad[0]!r}; known: {', '.join(sorted(known))}")
    if args.scale <= 0:
        raise SystemExit(f"--scale must be positive, got {args.scale}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before jax starts: the parts need the GPU
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    ok, why = gpu_visible()
    report = {"environment": environment(), "gpu": ok, "parts": []}
    for name, what, budget, command in PARTS:
        rec = {"name": name, "what": what, "budget_s": budget * args.scale}
        _validate(shlex.split(command.replace("{out}", "x.json")))
        if name not in names:
            rec.update(status="skipped", reason="not in --parts")
        elif not ok:
            rec.update(status="skipped", reason=f"no GPU: {why}")
        else:
            left = TOTAL_LIMIT_S * args.scale - (time.time() - start)
            if left < 10:
                rec.update(status="skipped", reason=f"the {TOTAL_LIMIT_S * args.scale:.0f} s total was spent")
            else:
                print(f"== {name}: {what} (budget {min(rec['budget_s'], left):.0f} s)", flush=True)
                rec.update(run_part(name, command, min(rec["budget_s"], left), args.out, args.python))
        print(f"{name}: {rec['status']}{' (' + rec['reason'] + ')' if rec['reason'] else ''}", flush=True)
        report["parts"].append(rec)
    report["elapsed_s"] = time.time() - start
    from meanflow_common.json_io import write_json

    write_json(os.path.join(args.out, "gpu_check.json"), report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(markdown(report) + "\n")
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md in {report['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
