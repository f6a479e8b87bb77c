"""`python -m parity`: the parity report (default) and checkpoint conversion.

    python -m parity                       # default suite: tiny DiT + tiny FLOWER, f32 + f64, cpu (+cuda)
    python -m parity --arch dit --preset small --dtype float64 --json report.json
    python -m parity --arch dit --preset tiny --checkpoint ckpt_dir   # given weights instead of random
    python -m parity convert SRC DST --arch dit --preset tiny         # orbax dir <-> .pt / .safetensors
    python -m parity debug --arch dit --dtype float64 --control gelu_erf --out DIR   # where the sides part
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)  # float64 parity needs it; float32 arrays stay float32

from meanflow_common.config import get_preset, override  # noqa: E402
from parity.convert import checkpoints  # noqa: E402
from parity.debug import report as debug_report  # noqa: E402
from parity.core.arch import ARCHS, Variant, default_variants, get_arch  # noqa: E402
from parity.core.harness import run_variant, trained_params  # noqa: E402
from parity.core.precision import XLA_COMPILE, pinned_precision, precision_settings, versions  # noqa: E402
from parity.core.report import format_table, format_tolerances, write_json  # noqa: E402


def _devices(arg: str) -> list[str]:
    import torch

    has_cuda = torch.cuda.is_available() and any(d.platform == "gpu" for d in jax.devices())
    if arg == "auto":
        return ["cpu", "cuda"] if has_cuda else ["cpu"]
    out = arg.split(",")
    for d in out:
        if d not in ("cpu", "cuda"):
            raise SystemExit(f"unknown device {d!r}; use cpu, cuda or auto")
        if d == "cuda" and not has_cuda:
            raise SystemExit("device cuda requested but no CUDA GPU is visible to both torch and jax")
    return out


def _variants(args) -> list[Variant]:
    archs = list(ARCHS) if args.arch == "all" else args.arch.split(",")
    for a in archs:
        get_arch(a)
    dit_p = args.preset if args.preset and archs == ["dit"] else args.dit_preset
    flower_p = args.preset if args.preset and archs == ["flower"] else args.flower_preset
    variants = [v for v in default_variants(dit_p, flower_p) if v.arch in archs]
    if args.set:
        variants = [dataclasses.replace(v, model_cfg=_override_model(v, args.set)) for v in variants]
    if args.variant:
        variants = [v for v in variants if args.variant in v.name]
        if not variants:
            raise SystemExit(f"no variant matches {args.variant!r}")
    return variants


def _override_model(v: Variant, sets):
    names = {f.name for f in dataclasses.fields(v.model_cfg)}
    mine = [s for s in sets if s.split("=", 1)[0] in names]
    return override(v.model_cfg, mine) if mine else v.model_cfg


def _trained_checks(args, variants, dtype, device):
    """The first variant of each architecture again, at weights trained for a few steps."""
    if args.trained_steps <= 0 or args.checkpoint:
        return []
    out, seen = [], set()
    for v in variants:
        if v.arch in seen:
            continue
        seen.add(v.arch)
        params = trained_params(get_arch(v.arch), v, args.seed, args.trained_steps, xla_compile=args.xla_compile)
        for r in run_variant(v, dtype, device, seed=args.seed, batch=args.batch, params_np=params,
                             xla_compile=args.xla_compile):
            r.variant = f"{r.variant} trained{args.trained_steps}"
            out.append(r)
    return out


def cmd_report(args) -> int:
    start = time.time()
    variants = _variants(args)
    devices = _devices(args.device)
    dtypes = args.dtype.split(",")
    results, meta_runs = [], []
    print(format_tolerances())
    for device in devices:
        for dtype in dtypes:
            with pinned_precision(True):
                for v in variants:
                    params = None
                    if args.checkpoint:
                        params = checkpoints.load_params(args.checkpoint, v.arch, v.model_cfg, key=args.checkpoint_key)
                    results += run_variant(v, dtype, device, seed=args.seed, batch=args.batch, params_np=params,
                                           xla_compile=args.xla_compile)
                results += _trained_checks(args, variants, dtype, device)
            if device == "cuda" and dtype == "float32":
                # The frameworks' default precision (TF32 GEMMs/convs): measured, never failing.
                with pinned_precision(False) as settings:
                    for v in variants:
                        drift = run_variant(v, dtype, device, seed=args.seed, batch=args.batch,
                                            xla_compile=args.xla_compile)
                        for r in drift:
                            r.variant = f"{r.variant} TF32"
                            r.info["informational"] = True
                            r.passed = True
                        results += drift
                meta_runs.append({"default_precision_settings": settings})
    elapsed = time.time() - start
    print(format_table(results))
    print(f"parity suite: {len(variants)} variants x {len(dtypes)} dtypes x {len(devices)} devices in {elapsed:.1f} s"
          f" (XLA:CPU compile {args.xla_compile})")
    if args.json:
        meta = {"versions": versions(), "precision": precision_settings(), "seed": args.seed,
                "batch": args.batch, "elapsed_s": elapsed, "runs": meta_runs,
                "xla_compile": {"mode": args.xla_compile, "cpu_options": XLA_COMPILE[args.xla_compile]},
                "variants": [{"arch": v.arch, "name": v.name, "model_cfg": dataclasses.asdict(v.model_cfg),
                              "meanflow_cfg": dataclasses.asdict(v.mf_cfg)} for v in variants]}
        with pinned_precision(True) as pinned:
            meta["precision"] = pinned
        write_json(args.json, results, meta)
        print(f"wrote {args.json}")
    return 0 if all(r.passed for r in results) else 1


def cmd_convert(args) -> int:
    arch = get_arch(args.arch)
    cfg = get_preset(arch.presets, args.preset, f"{arch.name} preset")
    if args.set:
        cfg = override(cfg, args.set)
    checkpoints.convert_file(args.src, args.dst, arch.name, cfg, key=args.checkpoint_key, overwrite=args.overwrite)
    print(f"converted {args.src} -> {args.dst} ({arch.name} {args.preset})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="all", help="dit, flower or all (default)")
    p.add_argument("--preset", default=None, help="preset of the single --arch")
    p.add_argument("--dit-preset", default="tiny")
    p.add_argument("--flower-preset", default="tiny")
    p.add_argument("--variant", default=None, help="only variants whose name contains this")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field by name (repeatable)")
    p.add_argument("--dtype", default="float32,float64")
    p.add_argument("--device", default="auto", help="cpu, cuda, cpu,cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=6, help="batch size (default 6: not a power of two)")
    p.add_argument("--checkpoint", default=None, help="orbax dir or .pt/.safetensors: compare these weights")
    p.add_argument("--checkpoint-key", default=None, help="entry of the checkpoint holding the params (e.g. ema_params)")
    p.add_argument("--trained-steps", type=int, default=8,
                   help="also compare each architecture after N AdamW steps from the standard init (0: off)")
    p.add_argument("--xla-compile", default="fast", choices=sorted(XLA_COMPILE),
                   help="XLA:CPU compile of the JAX reference: fast (default; LLVM -O0, ~4x quicker to compile, "
                   "outputs differ from full by rounding only) or full (the optimised executable the trainer runs)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("convert", help="convert a checkpoint between orbax and torch (.pt/.safetensors)")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--arch", required=True, choices=sorted(ARCHS))
    c.add_argument("--preset", required=True)
    c.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    c.add_argument("--checkpoint-key", default=None)
    c.add_argument("--overwrite", action="store_true")
    debug_report.add_arguments(sub.add_parser(
        "debug", help="the divergence debugger: the first module where the sides part "
                      "(primal and JVP tangent), see docs/DEBUGGING.md"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "debug":
            return debug_report.cmd_debug(args)
        return cmd_report(args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
