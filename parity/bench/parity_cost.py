"""Where the time and memory of a parity check go: per phase, measured, in one process.

    python -m parity.bench.parity_cost --arch dit --preset DiT-B/4 --batch 2            # phases
    python -m parity.bench.parity_cost --arch dit --preset DiT-B/4 --batch 2 --truth64  # + a float64 JAX run
    python -m parity.bench.parity_cost --suite -- --arch dit --preset DiT-B/4 --dtype float32 --batch 2
    python -m parity.bench.parity_cost --timeline -- --arch dit --preset DiT-B/4 --dtype float32 --batch 2

Phases follow `parity.suite.run.run_suite` for one dtype and device, calling the harness's
own functions: per variant the random weights, the JAX objective with gradients (its
tracing + XLA compilation reported apart, from jax.monitoring), optionally one more JAX
run in float64 on the same weights and bundle (the reference the float32 rule measures
against), the torch side (conversion, build, objective, backward) and the comparison;
then the trained variant (the Adam steps, then the same phases) and the extra check groups.

Memory: the process's peak resident set within each phase (Linux VmHWM, reset before each
phase through /proc/self/clear_refs) and the resident set after it. `--suite` runs
`python -m parity ARGS` in a fresh process instead and reports its wall time and peak
resident set (of the largest process, wait4 rusage, and of the process tree at once,
sampled); `--timeline` runs it in this process with each harness step timed as it runs (its
order and its overlaps with the x64-off child). The load average is recorded before and
after: the machine may be shared.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

from meanflow_common.cli_args import non_negative_int, positive_int
from parity.bench import measure

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in measure.load_average())


def _status_gb() -> tuple[float, float]:
    """(resident set, its high-water mark) of this process in GB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1e6, int(fields["VmHWM"].split()[0]) / 1e6


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


class Phases:
    """Timer and peak-RSS sampler of named phases; `compile_s` from jax.monitoring events."""

    def __init__(self, log=print):
        import jax.monitoring

        self.rows: list[dict] = []
        self._compile = 0.0
        self.log = log
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **_kwargs):
        if event in _COMPILE_EVENTS:
            self._compile += duration

    def run(self, name: str, fn, *args, **kwargs):
        gc.collect()
        resettable = _reset_peak()
        compile_before = self._compile
        sampler = _tree_sampler(os.getpid())
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        tree = sampler.stop() / 1024 / 1e6
        rss, peak = _status_gb()
        row = {"phase": name, "wall_s": wall, "cpu_s": cpu, "compile_s": self._compile - compile_before,
               "peak_rss_gb": peak, "peak_tree_rss_gb": max(tree, peak),
               "rss_after_gb": rss, "peak_is_phase": resettable}
        self.rows.append(row)
        self.log(f"  {name:34s} {wall:7.1f} s (CPU {cpu:6.1f} s, compile {row['compile_s']:5.1f} s)  peak {peak:5.2f} GB  "
                 f"after {rss:6.2f} GB")
        return out


def phase_run(args) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from parity.archs.registry import select_variants
    from parity.checks.base import SuiteContext
    from parity.checks.registry import make_checks, parse_groups
    from parity.core import harness as H
    from parity.core.precision import pinned_precision
    from parity.core.rule import DEFAULT_RULE, FIXED_RULE

    variants = select_variants(args.arch, args.preset, (), args.variant)
    dtype, device, seed, batch = args.dtype, "cpu", args.seed, args.batch
    rule = DEFAULT_RULE if args.truth64 else FIXED_RULE
    load_before = load_average()
    print(f"parity cost: {args.arch} {args.preset} batch {batch} {dtype}, {len(variants)} variant(s), "
          f"trained {args.trained_steps}, truth64 {args.truth64}, checks {args.checks} (load {load_before})")
    ph = Phases()
    results = []
    t0 = time.perf_counter()

    def one(v, label, params=None):
        # the suite's own pipeline, each stage timed
        sides = H.run_sides(v, dtype, device, seed=seed, batch=batch, params_np=params, xla_compile=args.xla_compile,
                            rule=rule, step=lambda name, fn, *a, **k: ph.run(f"{label}: {name}", fn, *a, **k))
        res = ph.run(f"{label}: compare", H.objective_checks, v.arch, v, sides.jax, sides.torch, dtype, device,
                     own=sides.own, rule=rule)
        sides.jax = None
        return res, sides

    # The order and the memory hygiene of run_suite: the checks prepared first (the x64-off
    # child beside the first compile), the trained variant right after the first one (same
    # executables), executables forgotten once a variant is done.
    ctx = SuiteContext(seed=seed, batch=batch, dtypes=(dtype,), devices=(device,), xla_compile=args.xla_compile,
                       rule=rule)
    active = make_checks(parse_groups(args.checks))
    try:
        with pinned_precision(True):
            for c in active:
                ph.run(f"{c.name}: prepare", c.prepare, variants, ctx)
            for k, v in enumerate(variants):
                res, sides = one(v, v.name)
                results += res
                for c in active:
                    results += ph.run(f"{c.name}: {v.name}", c.check, v, dtype, device, sides)
                del sides
                if k == 0 and args.trained_steps > 0:
                    params = ph.run(f"train {args.trained_steps} steps", H.trained_params, v.arch, v, seed,
                                    args.trained_steps, batch=batch, xla_compile=args.xla_compile,
                                    dtype=H.master_dtype(dtype))
                    results += one(v, f"{v.name} trained{args.trained_steps}", params)[0]
                    del params
                H.forget_compiled(v)
                H.release_memory()
            for c in active:
                results += ph.run(f"{c.name}: finish", c.finish)
    finally:
        for c in active:
            c.close()
    total = time.perf_counter() - t0
    peak = max(r["peak_tree_rss_gb"] for r in ph.rows)
    failed = [f"{r.variant}/{r.quantity}" for r in results if not r.passed]
    print(f"  total {total:.1f} s, peak {peak:.2f} GB, compile {sum(r['compile_s'] for r in ph.rows):.1f} s; "
          f"{len(results)} checks, {len(failed)} failed {failed[:6]} (load {load_before} -> {load_average()})")
    return {"mode": "phases", "args": vars(args), "phases": ph.rows, "total_s": total, "peak_rss_gb": peak,
            "checks": len(results), "failed": failed, "load_before": load_before, "load_after": load_average()}


def _tree_sampler(pid: int):
    """The peak resident set of `pid` and its children together, sampled every 50 ms: a
    parent and the child it waits on are counted as the machine holds them."""
    return measure.RssSampler(0.05, lambda: measure.tree_rss_bytes(pid))


def suite_run(parity_args: list[str], timeout: float) -> dict:
    """`python -m parity PARITY_ARGS` in a fresh process: wall time, peak RSS of the largest
    process (wait4 on that child: its own rusage, not this process's earlier children; a
    child's high-water mark starts at this process's resident set when it is spawned, small
    from the command line) and of the whole process tree at once (sampled every 50 ms)."""
    import threading

    cmd = [sys.executable, "-m", "parity", *parity_args]
    load_before = load_average()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = _tree_sampler(proc.pid)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    wall = time.perf_counter() - t0
    tree_peak = sampler.stop()
    row = {"mode": "suite", "command": " ".join(["python -m parity", *parity_args]), "wall_s": wall,
           "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_gb": usage.ru_maxrss / 1e6,
           # in the unit of ru_maxrss and VmHWM (kB / 1e6)
           "peak_tree_rss_gb": tree_peak / 1024 / 1e6, "returncode": proc.returncode,
           "load_before": load_before, "load_after": load_average(),
           "tail": out[-3000:]}
    print(out[-3000:])
    print(f"{row['command']}: {wall:.1f} s wall, {row['cpu_s']:.1f} s CPU, peak RSS {row['peak_rss_gb']:.2f} GB (largest "
          f"process; {row['peak_tree_rss_gb']:.2f} GB the process tree at once), "
          f"exit {proc.returncode} (load {load_before} -> {row['load_after']})")
    return row


# The harness's steps whose calls a timeline records: (module, attribute path).
TIMELINE_CALLS = (
    ("parity.core.harness", ("run_sides", "random_params", "compile_variant", "run_jax", "reference_own_errors",
                             "torch_state", "run_torch", "objective_checks", "trained_params")),
    ("parity.checks.x64_off", ("X64OffRun.__init__", "X64OffRun.wait", "x64_off_checks")),
    ("parity.checks.dropout", ("DropoutCheck.check",)),
    ("parity.checks.branches", ("BranchesCheck.finish",)),
    ("parity.checks.samplers", ("SamplersCheck.finish",)),
)


def timeline_run(parity_args: list[str]) -> dict:
    """`python -m parity PARITY_ARGS` in this process with the harness's steps
    (TIMELINE_CALLS) timed: per call its start, wall time and the peak resident set of this
    process and its children (the x64-off child included) while it ran. Shows the real
    suite's order and overlaps, which the phase tool only mirrors."""
    import importlib

    from parity.suite.command import main as parity_main

    rows: list = []
    t0 = time.perf_counter()
    saved = []

    def wrap(owner, name, label):
        fn = getattr(owner, name)

        def timed(*a, **k):
            sampler, start = _tree_sampler(os.getpid()), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                row = {"call": label, "start_s": start - t0, "wall_s": time.perf_counter() - start,
                       "peak_tree_rss_gb": sampler.stop() / 1024 / 1e6}
                rows.append(row)
                print(f"  {row['start_s']:7.1f} s  +{row['wall_s']:6.1f} s  peak {row['peak_tree_rss_gb']:5.2f} GB  {label}",
                      flush=True)

        saved.append((owner, name, fn))
        setattr(owner, name, timed)

    for module, paths in TIMELINE_CALLS:
        mod = importlib.import_module(module)
        for path in paths:
            owner = mod
            *parents, name = path.split(".")
            for p in parents:
                owner = getattr(owner, p)
            wrap(owner, name, path)
    sampler = _tree_sampler(os.getpid())
    try:
        code = parity_main(parity_args)
    finally:
        for owner, name, fn in reversed(saved):
            setattr(owner, name, fn)
    total, peak = time.perf_counter() - t0, sampler.stop() / 1024 / 1e6
    print(f"python -m parity {' '.join(parity_args)}: {total:.1f} s, peak {peak:.2f} GB (process tree), exit {code}")
    return {"mode": "timeline", "command": " ".join(["python -m parity", *parity_args]), "calls": rows,
            "total_s": total, "peak_tree_rss_gb": peak, "returncode": code, "load_after": load_average()}


def markdown(report: dict) -> str:
    if report["mode"] == "timeline":
        lines = ["| start s | wall s | peak RSS GB (process tree) | call |", "|---:|---:|---:|---|"]
        lines += [f"| {r['start_s']:.1f} | {r['wall_s']:.1f} | {r['peak_tree_rss_gb']:.2f} | {r['call']} |"
                  for r in report["calls"]]
        lines.append(f"| | **{report['total_s']:.0f}** | **{report['peak_tree_rss_gb']:.2f}** | total |")
        return "\n".join(lines)
    if report["mode"] == "suite":
        return (f"| command | wall s | CPU s | peak RSS GB (largest process / process tree) | exit | load before -> "
                f"after |\n|---|---:|---:|---:|---:|---|\n"
                f"| `{report['command']}` | {report['wall_s']:.0f} | {report['cpu_s']:.0f} | {report['peak_rss_gb']:.2f} / "
                f"{report['peak_tree_rss_gb']:.2f} | "
                f"{report['returncode']} | {report['load_before']} -> {report['load_after']} |")
    lines = ["| phase | wall s | CPU s | of which compile s (wall) | peak RSS GB (with children) | RSS after GB |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['phase']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['compile_s']:.1f} | {r['peak_rss_gb']:.2f} "
              f"({r['peak_tree_rss_gb']:.2f}) | {r['rss_after_gb']:.2f} |" for r in report["phases"]]
    cpu = sum(r["cpu_s"] for r in report["phases"])
    lines.append(f"| **total** | **{report['total_s']:.0f}** | **{cpu:.0f}** | | **{report['peak_rss_gb']:.2f}** | |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity.bench.parity_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="dit")
    p.add_argument("--preset", default=None)
    p.add_argument("--variant", default=None, help="only variants whose name contains this")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--trained-steps", type=non_negative_int, default=8)
    p.add_argument("--checks", default="all", help="extra check groups as in python -m parity --checks")
    p.add_argument("--xla-compile", default="fast", choices=("fast", "full"))
    p.add_argument("--truth64", action="store_true", help="one more JAX run per variant in float64 (same weights)")
    p.add_argument("--suite", action="store_true", help="time `python -m parity ARGS` (the arguments after --)")
    p.add_argument("--timeline", action="store_true",
                   help="run `python -m parity ARGS` in this process, timing each harness step as it runs")
    p.add_argument("--timeout", type=float, default=3600.0, help="--suite: seconds before the run is killed")
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--markdown", default=None, metavar="PATH")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parity_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, parity_args = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    if (args.suite or args.timeline) and not parity_args:
        raise SystemExit("--suite and --timeline need the python -m parity arguments after --")
    if args.suite and args.timeline:
        raise SystemExit("--suite and --timeline: choose one")
    if args.suite:
        report = suite_run(parity_args, args.timeout)
    elif args.timeline:
        report = timeline_run(parity_args)
    else:
        report = phase_run(args)
    report["host"] = {"cpus": os.cpu_count()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report) + "\n")
    print(markdown(report))
    return 0 if report.get("returncode", 0) == 0 and not report.get("failed") else 1


if __name__ == "__main__":
    sys.exit(main())
