"""`python -m parity.bench`: the cost of the MeanFlow training step in both backends.

    python -m parity.bench                          # CPU table: DiT and FLOWER at two sizes each
    python -m parity.bench --quick                  # smoke test (tiny sizes, a subset of runners)
    python -m parity.bench --device cuda            # GPU table: DiT-M, DiT-B/4, FLOWER base/default
    python -m parity.bench --sizes dit-s,flower-small --steps 7 --json bench.json
    python -m parity.bench --parity-suite "default,xla full compile,cache cold,cache warm"

In one process and one run, for every size: the training step (loss, backward, AdamW,
EMA) of plain flow matching (FM) and MeanFlow (MF), JAX under jit, PyTorch eager and with
`torch.compile`; the PyTorch variants (the straightforward `torch.func.jvp` port, the
memory-saving path, the attention implementations under the JVP); median step times,
warm-up/compilation (separately), peak memory and the ratios MF/FM, PyTorch/JAX and
compiled/eager against the targets. Then the FLOWER sampling latency (1 step against 4)
and the time of the CPU parity suite (a training method's step, iMF or pMF: `python -m parity
bench-methods`). Method: parity/bench/measure.py; the figures and how to read them: docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

from meanflow_common.cli_args import non_negative_int, positive_int
from meanflow_common.json_io import write_json
from parity.bench.cases import DEFAULT_SIZES, QUICK_SIZES, SIZES, make_case, rel_diff, timed
from parity.bench.measure import environment, load_average, peak_step_memory, time_interleaved
from parity.bench.report import TARGETS, format_case, format_targets, markdown, targets
TORCH_EAGER = ["mf", "fm", "mf torch.func+math", "mf attn=math", "mf attn=explicit", "mf memory_saving"]


def _setup_backends(args) -> None:
    """Environment that must be set before JAX starts, thread counts and GPU precision."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
    if args.threads == 1:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    import jax
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        if not torch.cuda.is_available() or jax.default_backend() != "gpu":
            raise SystemExit("--device cuda needs a CUDA GPU visible to both torch and jax")
        on = args.tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
        jax.config.update("jax_default_matmul_precision", "tensorfloat32" if on else "highest")


def _weights(case, seed: int):
    """Float32 JAX parameters, every leaf random, and the same numbers as a torch state dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jax_meanflow.params import randomize_params
    from parity import convert

    arch = case.arch
    _, init = arch.jax_build(case.model_cfg)
    params = randomize_params(init(jax.random.PRNGKey(seed), jnp.float32), seed)
    params_np = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    return params_np, convert.jax_to_torch(params_np, arch.table, case.model_cfg)


def _torch_variants(args) -> list[str]:
    names = list(TORCH_EAGER)
    if args.device == "cuda" and importlib.util.find_spec("jvp_flash_attention") is not None:
        names.append("mf attn=flash")
    if not args.no_compile:
        names += ["compile mf", "compile fm"]
    return names


def _check(case, params_np, state_dict, args) -> None:
    """du/dt of the default JVP engine against plain torch.func.jvp on this network."""
    from parity.bench.cases import torch_terms

    ours = torch_terms(case, state_dict, args.device, "rules")
    ref = torch_terms(case, state_dict, args.device, "torch.func")
    case.checks["du_dt_rules_vs_torch_func"] = rel_diff(ours["du_dt"], ref["du_dt"])
    case.checks["loss_rules_vs_torch_func"] = abs(ours["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)


def _cross_backend(case, runners) -> None:
    """First-step loss and gradient norm, JAX vs PyTorch (same weights, batch and noise)."""
    by = {r.name: r.result.get("first_step") for r in runners}
    jax_m, torch_m = by.get("jax jit mf"), by.get("torch eager mf")
    if case.arch.dropout(case.model_cfg) > 0:
        case.checks["first_step_jax_vs_torch"] = "n/a: dropout masks differ between frameworks"
    elif jax_m and torch_m:
        case.checks["first_step_jax_vs_torch"] = {
            k: abs(jax_m[k] - torch_m[k]) / max(abs(jax_m[k]), 1e-30) for k in ("loss", "grad_norm")}


def run_case(name: str, args, log=print, jax_in_quick: bool = True, sizes=None) -> dict:
    """Time every runner of size `name` (of `sizes`, default SIZES); with --quick, the JAX
    runner (one MeanFlow step) only where `jax_in_quick` (the first size of the run)."""
    from parity.bench.cases import jax_runners, torch_runners

    case = make_case(name, args.batch, {"tokens": args.tokens}, args.guidance, args.seed, sizes=sizes)
    log(f"\n== {name}: {case.info['what']}, batch {args.batch} (load {load_average()}) ==")
    with timed(case.info, "setup_s"):
        params_np, state_dict = _weights(case, args.seed)
        if not args.no_check:
            _check(case, params_np, state_dict, args)
        jax_objectives, options = ("mf", "fm"), None
        if args.quick:  # one XLA compile, without the optimisations that make it take ~10 s on 2 cores
            jax_objectives = ("mf",) if jax_in_quick else ()
            from parity.core.precision import XLA_COMPILE  # after _setup_backends: it imports jax

            options = XLA_COMPILE["fast"]
        runners = (jax_runners(case, params_np, jax_objectives, options)
                   + torch_runners(case, state_dict, args.device, _torch_variants(args)))
    load_before = load_average()
    alive = time_interleaved(runners, args.steps, args.warmup, log=log)
    load_after = load_average()
    for r in alive:
        r.result["memory"] = peak_step_memory(r, args.device)
    _cross_backend(case, runners)
    out = {"name": name, "arch": case.arch.name, "info": case.info, "checks": case.checks,
           "load_before": load_before, "load_after": load_after,
           "runners": [_runner_record(r) for r in runners]}
    out["ratios"] = ratios(out["runners"])
    out["ratios_cpu_time"] = ratios(out["runners"], "cpu_ms")
    log(format_case(out))
    return out


def _runner_record(r) -> dict:
    res = dict(r.result)
    if isinstance(res.get("compiler_warnings"), set):
        res["compiler_warnings"] = sorted(res["compiler_warnings"])
    return {"name": r.name, "backend": r.backend, "mode": r.mode, "objective": r.objective,
            "variant": r.variant, **res}


def ratios(records: list[dict], key: str = "wall_ms") -> dict:
    """MF/FM per backend and mode, PyTorch/JAX and compiled/eager (median wall times, or
    `key="cpu_ms"`: process CPU time, the steadier measure of work on a busy machine when
    every runner is single-threaded)."""
    t = {r["name"]: r.get(key) for r in records}

    def div(a, b):
        return t[a] / t[b] if t.get(a) and t.get(b) else None

    return {
        "mf_over_fm": {"jax": div("jax jit mf", "jax jit fm"), "torch eager": div("torch eager mf", "torch eager fm"),
                       "torch eager torch.func+math port": div("torch eager mf torch.func+math", "torch eager fm"),
                       "torch compile": div("torch compile mf", "torch compile fm")},
        "torch_over_jax": {"mf eager": div("torch eager mf", "jax jit mf"), "fm eager": div("torch eager fm", "jax jit fm"),
                           "mf compile": div("torch compile mf", "jax jit mf")},
        "compiled_over_eager": {"mf": div("torch compile mf", "torch eager mf"), "fm": div("torch compile fm", "torch eager fm")},
        "memory_saving_over_jvp": div("torch eager mf memory_saving", "torch eager mf"),
        "rules_over_torch_func_port": div("torch eager mf", "torch eager mf torch.func+math"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default=None, help="also (or, without --sizes, only) benchmark these architectures: "
                   "registered names or package.module:NAME (the first variant of each)")
    p.add_argument("--preset", default=None, help="model preset of the --arch architectures")
    p.add_argument("--sizes", default=None, help=f"comma list of {', '.join(SIZES)} (default per device: "
                   f"cpu {DEFAULT_SIZES['cpu']}; cuda {DEFAULT_SIZES['cuda']})")
    p.add_argument("--steps", type=positive_int, default=7, help="timed steps per runner (median reported)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls first (the first one compiles)")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--tokens", type=positive_int, default=64, help="FLOWER conditioning tokens per sample")
    p.add_argument("--guidance", action="store_true", help="DiT with the reference CFG target (2 extra forwards)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runners")
    p.add_argument("--no-check", action="store_true", help="skip the du/dt cross-check of the JVP engines")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (1 also makes XLA single-threaded)")
    p.add_argument("--tf32", default="on", choices=["on", "off"], help="CUDA float32 matmuls/convs in TF32 (both)")
    p.add_argument("--sampling-batches", default="1,32", help="FLOWER sampling latency batch sizes ('' = skip)")
    p.add_argument("--parity-suite", default="default", help="setups of the `python -m parity` timing "
                   "('' = skip): default (fast compile), xla full compile, cache cold, cache warm, full+cache cold, "
                   "full+cache warm")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="write every number as JSON")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the tables as Markdown")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, batch 4, 2 steps, 1 thread; "
                   "JAX only for the DiT MeanFlow step; no torch.compile, no parity suite")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        if args.sizes is None and not args.arch:
            args.sizes = QUICK_SIZES
        args.steps, args.warmup, args.batch, args.tokens = min(args.steps, 2), 1, min(args.batch, 4), 8
        args.no_compile, args.parity_suite, args.sampling_batches = True, "", "1"
        args.threads = args.threads or 1
    default = "" if args.arch else DEFAULT_SIZES[args.device]
    sizes = [s for s in (args.sizes if args.sizes is not None else default).split(",") if s]
    for s in sizes:
        if s not in SIZES:
            raise SystemExit(f"unknown size {s!r}; available: {', '.join(SIZES)}")
    start = time.time()
    user_env = dict(os.environ)  # the parity suite runs as the user runs it, without our settings
    _setup_backends(args)
    from parity.bench.extra import parity_suite_time, sampling_latency

    report = {"environment": environment(args.device), "args": vars(args), "targets_defined": TARGETS}
    print(f"parity.bench on {args.device}: torch {report['environment']['torch']}, "
          f"jax {report['environment']['jax']}, load {report['environment']['load_average']}")
    table = dict(SIZES)
    if args.arch:  # resolved after the backends are set up: the user's module may import them
        from parity.bench.cases import arch_sizes
        from parity.archs.registry import resolve_variants

        own = arch_sizes(resolve_variants(args.arch, args.preset))
        table.update(own)
        sizes += [s for s in own if s not in sizes]
    report["cases"] = [run_case(s, args, jax_in_quick=k == 0, sizes=table) for k, s in enumerate(sizes)]
    batches = [int(b) for b in args.sampling_batches.split(",") if b]
    report["sampling"] = []
    for s in sizes:
        if batches and table[s].sampling:
            print(f"\n== sampling latency, {s} ==")
            report["sampling"] += sampling_latency(s, args.device, batches=batches, tokens=args.tokens,
                                                   calls=5 if args.quick else 20,
                                                   backends=("torch",) if args.quick else ("torch", "jax"))
    setups = [x.strip() for x in args.parity_suite.split(",") if x.strip()]
    report["parity_suite"] = []
    if setups:
        print("\n== parity suite ==")
        report["parity_suite"] = parity_suite_time(setups, base_env=user_env)
    report["targets"] = targets(report["cases"], report["parity_suite"])
    print(format_targets(report["targets"]))
    report["elapsed_s"] = time.time() - start
    report["load_average_end"] = load_average()
    print(f"\nbenchmark done in {report['elapsed_s']:.0f} s (load {report['load_average_end']})")
    if args.json:
        write_json(args.json, report)  # non-finite numbers as "inf" / "nan"
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(report) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
