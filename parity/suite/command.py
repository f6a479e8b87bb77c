"""The parity check's command line (`python -m parity [check]`, and its `convert` and
`debug` subcommands); `parity.cli` dispatches the other subcommands before this loads.

    python -m parity                       # default suite: tiny DiT + tiny FLOWER, f32 + f64, cpu (+cuda)
    python -m parity --arch dit --preset small --dtype float64 --json report.json
    python -m parity --arch dit --preset DiT-B/4 --dtype float32 --rule fixed   # the fixed float32 table alone
    python -m parity --arch mypkg.mymodule:MY_ARCH          # a network pair of your own (docs/EXTENDING.md)
    python -m parity --arch mypkg.mymodule:MY_ARCH --objective mypkg.mymodule:MY_OBJECTIVE   # an objective of your own
    python -m parity --arch dit --preset tiny --checkpoint ckpt_dir   # given weights instead of random
    python -m parity convert SRC DST --arch dit --preset tiny         # orbax dir <-> .pt / .safetensors
    python -m parity debug --arch dit --dtype float64 --control gelu_erf --out DIR   # where the sides part

`--arch` takes a registered name (dit, flower, policy; comma-separated; "all"), or
package.module:NAME naming an Arch, a Variant or a list of Variants importable from the
current folder. `--objective` takes a registered name (meanflow, the default) or
package.module:NAME naming an Objective.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from meanflow_common.cli_args import non_negative_int, positive_int
from parity.core.rule import DEFAULT_RULE, RULES, Float32Rule

def _setup_jax():
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 parity needs it; float32 arrays stay float32


SUPPORTED_DTYPES = ("float32", "float64")
# Exit status of a check whose only failures are branch coverage (the inputs left a branch of
# the objective unexercised, e.g. at --batch 1): every objective comparison passed.
COVERAGE_ONLY_EXIT = 3
EXIT_STATUS = ("exit status: 0 every check passed; 1 a check failed; 2 bad input (the message names it); "
               f"{COVERAGE_ONLY_EXIT} only the branch coverage failed (every objective comparison passed; "
               "use a larger --batch)")


def _devices(arg: str) -> list[str]:
    import jax
    import torch

    has_cuda = torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())
    if arg == "auto":
        return ["cpu", "cuda"] if has_cuda else ["cpu"]
    out = arg.split(",")
    for d in out:
        if d not in ("cpu", "cuda"):
            raise ValueError(f"--device {d!r}: use cpu, cuda, cpu,cuda or auto")
        if d == "cuda" and not has_cuda:
            raise ValueError("--device cuda: no CUDA GPU is visible to both torch and jax")
    return out


def _variants(args):
    from parity.archs.registry import select_variants

    return select_variants(args.arch, args.preset, args.set, args.variant, args.objective)


def check_run_args(args, dtypes=SUPPORTED_DTYPES) -> list[str]:
    """The --dtype list of a parity run, checked (--batch and --seed are checked by argparse)."""
    chosen = [d.strip() for d in args.dtype.split(",")]
    bad = [d for d in chosen if d not in dtypes]
    if bad:
        raise ValueError(f"--dtype {bad[0]!r} is not supported; the parity checks compare {', '.join(dtypes)} "
                         "(comma-separated)")
    return chosen


def float32_rule(args) -> Float32Rule:
    """The float32 rule of --rule / --rule-factor (checked: a positive finite factor)."""
    return Float32Rule(args.rule, factor=args.rule_factor)


def cmd_report(args) -> int:
    _setup_jax()
    from parity.convert import checkpoints
    from parity.core.arch import archs_of
    from parity.checks.registry import parse_groups
    from parity.suite.run import run_suite
    from parity.core.precision import XLA_COMPILE, pinned_precision, precision_settings, versions
    from parity.core.report import format_table, format_tolerances, write_json
    from parity.suite.report import ParityReport

    start = time.time()
    dtypes = check_run_args(args)
    variants = _variants(args)
    archs = archs_of(variants)
    devices = _devices(args.device)
    rule = float32_rule(args)
    print(format_tolerances(archs, rule))
    params_for = None
    if args.checkpoint:
        def params_for(v):
            return checkpoints.load_params(args.checkpoint, v.arch, v.model_cfg, key=args.checkpoint_key)
        print(f"weights: {args.checkpoint}{' (entry ' + args.checkpoint_key + ')' if args.checkpoint_key else ''}, "
              f"for every variant (not random; no trained-weights rows)")
    results, meta_runs = run_suite(variants, dtypes, devices, seed=args.seed, batch=args.batch, params_for=params_for,
                                   trained_steps=args.trained_steps, xla_compile=args.xla_compile,
                                   checks=parse_groups(args.checks), mixed=args.mixed, rule=rule)
    elapsed = time.time() - start
    print(format_table(results))
    print(f"parity suite: {len(variants)} variants x {len(dtypes)} dtypes x {len(devices)} devices in {elapsed:.1f} s"
          f" (XLA:CPU compile {args.xla_compile})"
          f"{'; weights ' + args.checkpoint if args.checkpoint else ''}")
    report = ParityReport(results, variants, seed=args.seed, batch=args.batch, rule=rule, params_for=params_for,
                          command={"arch": args.arch, "objective": args.objective, "preset": args.preset,
                                   "sets": list(args.set),
                                   "checkpoint": args.checkpoint, "checkpoint_key": args.checkpoint_key})
    if not report.passed:  # what failed, and the debugger's blame or the command that gives it
        print(report.failure_message(blame="auto"))
    if args.json:
        meta = {"versions": versions(), "precision": precision_settings(), "seed": args.seed,
                "batch": args.batch, "elapsed_s": elapsed, "runs": meta_runs,
                "xla_compile": {"mode": args.xla_compile, "cpu_options": XLA_COMPILE[args.xla_compile]},
                "variants": [{"arch": v.arch.name, "name": v.name, "objective": v.objective.name,
                              "model_cfg": dataclasses.asdict(v.model_cfg),
                              "meanflow_cfg": dataclasses.asdict(v.mf_cfg)} for v in variants]}
        with pinned_precision(True) as pinned:
            meta["precision"] = pinned
        write_json(args.json, results, meta, archs, rule)
        print(f"wrote {args.json}")
    if report.passed:
        return 0
    return COVERAGE_ONLY_EXIT if report.coverage_only else 1


def cmd_convert(args) -> int:
    from meanflow_common.config import override
    from parity.convert import checkpoints
    from parity.archs.registry import resolve_arch

    arch = resolve_arch(args.arch)
    cfg = arch.preset(args.preset)
    if args.set:
        cfg = override(cfg, args.set)
    bad = checkpoints.convert_file(args.src, args.dst, arch, cfg, key=args.checkpoint_key, overwrite=args.overwrite,
                                   allow_nonfinite=args.allow_nonfinite)
    if bad:
        print(f"warning: wrote non-finite weights (--allow-nonfinite): {', '.join(bad[:5])}"
              f"{' and more' if len(bad) > 5 else ''}", file=sys.stderr)
    kind = "torch state dict" if args.dst.endswith(checkpoints.TORCH_SUFFIXES) else 'orbax checkpoint {"params": tree}'
    print(f"converted {args.src} -> {args.dst} ({kind}; {arch.name} {args.preset or arch.default_preset})")
    return 0


def build_parser(usage: str | None = None, others: dict | None = None) -> argparse.ArgumentParser:
    """The check's parser with its `convert` and `debug` subcommands; `usage`: the help text
    (default: this module's); `others`: {name: (module, what)} of the subcommands the caller
    dispatches itself, listed in the help (parity.cli's)."""
    from parity.checks.registry import CHECK_GROUPS, DEFAULT_CHECKS

    p = argparse.ArgumentParser(prog="python -m parity", description=usage or __doc__, epilog=EXIT_STATUS,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=None, help="registered names (dit, flower; comma-separated; all) or "
                   "package.module:NAME (an Arch or a list of variants); default: the built-in suite")
    p.add_argument("--objective", default=None, help="the objective both sides compute: a registered name "
                   "(meanflow, the default) or package.module:NAME (an Objective; docs/EXTENDING.md)")
    p.add_argument("--preset", default=None, help="model preset of every --arch (default: each one's default preset)")
    p.add_argument("--variant", default=None, help="only variants whose name contains this")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field by name (repeatable)")
    p.add_argument("--dtype", default="float32,float64")
    p.add_argument("--device", default="auto", help="cpu, cuda, cpu,cuda or auto")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch", type=positive_int, default=6, help="batch size (default 6: not a power of two)")
    p.add_argument("--checkpoint", default=None, help="orbax dir or .pt/.safetensors: compare these weights")
    p.add_argument("--checkpoint-key", default=None, help="entry of the checkpoint holding the params (e.g. ema_params)")
    p.add_argument("--trained-steps", type=non_negative_int, default=8,
                   help="also compare each architecture after N AdamW steps from the standard init (0: off)")
    p.add_argument("--xla-compile", default="fast", choices=("fast", "full"),
                   help="XLA:CPU compile of the JAX reference: fast (default; LLVM -O0, ~4x quicker to compile, "
                   "outputs differ from full by rounding only) or full (the optimised executable the trainer runs)")
    p.add_argument("--checks", default=DEFAULT_CHECKS, metavar="GROUPS",
                   help=f"checks beyond the objective comparison: all (default: every group but mixed), none, or a "
                   f"comma list of {', '.join(CHECK_GROUPS)} (see parity/checks/registry.py)")
    p.add_argument("--mixed", action="store_true", help="also report (never fail) bf16-mixed rows per float32 "
                   "variant: torch autocast bf16 vs Flax bfloat16 layers, and autocast off around the JVP")
    p.add_argument("--rule", default="calibrated", choices=RULES,
                   help="how float32 is judged: calibrated (default: the budget scales with the reference's own "
                   "float32 error against its float64 run, the fixed verdict reported beside it) or fixed "
                   "(the tolerance table alone)")
    p.add_argument("--rule-factor", type=float, default=DEFAULT_RULE.factor,
                   help="calibrated rule: allowed |torch32 - jax32| / |jax32 - jax64| (default %(default)s)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("convert", help="convert a checkpoint between orbax and torch (.pt/.safetensors)",
                       description="DST: a .pt/.pth/.bin/.safetensors file (torch) or an orbax folder (no suffix), "
                       'written as {"params": tree}; read back by convert and --checkpoint as the bare tree')
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--arch", required=True, help="a registered name or package.module:NAME (an Arch)")
    c.add_argument("--preset", default=None, help="model preset (default: the architecture's default preset)")
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    c.add_argument("--checkpoint-key", default=None)
    c.add_argument("--overwrite", action="store_true")
    c.add_argument("--allow-nonfinite", action="store_true",
                   help="write NaN/inf weights anyway (with a warning); by default they are refused")
    from parity.debug.report import add_arguments

    add_arguments(sub.add_parser(
        "debug", help="the divergence debugger: the first module where the sides part "
                      "(primal and JVP tangent), see docs/DEBUGGING.md"))
    for name, (_, what) in (others or {}).items():
        sub.add_parser(name, help=what, add_help=False)
    return p


def main(argv=None, usage: str | None = None, others: dict | None = None) -> int:
    """The check (default), `convert` and `debug`; exit 0 on success, 1 when a check failed,
    2 on bad input (the message names it), COVERAGE_ONLY_EXIT when only branch coverage
    failed. `usage`, `others`: as `build_parser`."""
    from meanflow_common.cli_args import usage_error_exit

    args = build_parser(usage, others).parse_args(argv)

    def run() -> int:
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "debug":
            _setup_jax()
            from parity.debug.report import cmd_debug

            return cmd_debug(args)
        return cmd_report(args)

    return usage_error_exit(run)
