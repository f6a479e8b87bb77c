"""The debugger's output (text tables, the error-vs-depth PNG, the JSON file) and its command
line, `python -m parity debug` (registered in parity/cli.py)."""
from __future__ import annotations

import math
import os

from meanflow_common.cli_args import non_negative_int, positive_int
from meanflow_common.json_io import write_json as write_json_file
from parity.core.arch import Variant
from parity.archs.registry import resolve_variants
from parity.debug.analyse import NETWORK, DebugResult, analyse, prepare_case
from parity.debug.capture import DEFAULT_ATTENTION, DEFAULT_ENGINE
from torch_meanflow.attention import JVP_IMPLS
from torch_meanflow.objective import JVP_ENGINES

FLOOR = 1e-20  # exact agreement (error 0) is drawn here on the log axis


def _e(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def format_modules(res: DebugResult) -> str:
    w = max([len(m.name) for m in res.modules] + [9])
    head = (f"{'#':>3}  {'module':{w}}  {'shape':18} {'primal abs':>10} {'primal rel':>10} "
            f"{'tangent abs':>11} {'tangent rel':>11} {'input rel':>9}  flag")
    lines = [head, "-" * len(head)]
    for m in res.modules:
        name = m.name or NETWORK
        flag = "".join(c for c, bad in (("P", m.primal_over), ("T", m.tangent_over)) if bad)
        if name == res.blamed:
            flag += " <- blamed"
        in_rel = max(m.input_primal_rel, m.input_tangent_rel)
        shape = str(m.shape).replace(" ", "") + (f"x{m.n_arrays}" if m.n_arrays > 1 else "")
        lines.append(f"{m.index:3d}  {name:{w}}  {shape:18} {_e(m.primal_abs):>10} "
                     f"{_e(m.primal_rel):>10} {_e(m.tangent_abs):>11} {_e(m.tangent_rel):>11} {_e(in_rel):>9}  {flag}")
    return "\n".join(lines)


def format_objective(res: DebugResult) -> str:
    lines = [f"{'term':16} {'max abs':>10} {'max rel':>10} {'tol':>8}  ok    where"]
    for r in res.objective:
        lines.append(f"{r.quantity:16} {_e(r.max_abs):>10} {_e(r.max_rel):>10} {r.tol:8.1e}  "
                     f"{'PASS' if r.passed else 'FAIL'}  {r.where}")
    return "\n".join(lines)


def format_depth(res: DebugResult) -> str:
    parts = [f"{name}: primal {_e(p)}, tangent {_e(t)}" for name, p, t in res.blocks]
    g = res.growth
    factor = ", ".join(f"{k.split('_')[0]} x{v:.2f}" if v is not None else f"{k.split('_')[0]} -"
                       for k, v in g.items())
    return "error with depth (block outputs, max rel):\n  " + "\n  ".join(parts) + f"\n  growth per block: {factor}"


def format_precision_matrix(rows: list) -> str:
    head = (f"{'setting':20} {'backend':7} {'u rel':>9} {'du/dt rel':>9} {'torch-jax u':>11} "
            f"{'torch-jax du/dt':>15}  note")
    lines = ["precision matrix (network u and du/dt; rel = max error / max |float64 JAX|)", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['setting']:20} {r['backend']:7} {_e(r['u_rel']):>9} {_e(r['du_dt_rel']):>9} "
                     f"{_e(r['u_rel_vs_jax']):>11} {_e(r['du_dt_rel_vs_jax']):>15}  {r['note']}")
    return "\n".join(lines)


def format_modes(rows: list) -> str:
    w = max(len(r["mode"]) for r in rows)
    head = (f"{'mode':{w}} {'u vs jax':>9} {'du vs jax':>9} {'u vs dflt':>9} {'du vs dflt':>10} "
            f"{'graphs/ops':>10}  note")
    lines = ["compare modes (torch execution paths; rel = max error / max |reference|; dflt = the default "
             "engine and attention for objective rows, eager torch.func.jvp for network rows)", head, "-" * len(head)]
    for r in rows:
        c = r["compiled"]
        comp = "-" if c is None else f"{c['graphs']}/{c['ops']}"
        lines.append(f"{r['mode']:{w}} {_e(r['u_rel_vs_jax']):>9} {_e(r['du_dt_rel_vs_jax']):>9} "
                     f"{_e(r['u_rel_vs_default']):>9} {_e(r['du_dt_rel_vs_default']):>10} {comp:>10}  {r['note']}")
    return "\n".join(lines)


def format_report(res: DebugResult) -> str:
    ctl = f", control {res.control}" if res.control else ""
    out = [
        f"divergence debugger: {res.arch} / {res.variant} / {res.dtype} / {res.device}{ctl}; torch JVP engine "
        f"{res.engine}, attention {res.attention}",
        f"network call inside the MeanFlow JVP: primals (z_t, t, r), tangents (v_g, 1, 0); "
        f"tolerance primal {res.tol_primal:.0e} (u), tangent {res.tol_tangent:.0e} (du/dt), relative to JAX's max",
        "",
        format_modules(res),
        "",
        format_depth(res),
        "",
        "objective terms:",
        format_objective(res),
        "",
        f"blamed: {res.blamed or '-'}",
        f"diagnosis: {res.diagnosis}",
        f"not compared (torch-only modules): {', '.join(res.torch_only) or '-'}",
    ]
    if res.jax_only_names:
        out.append(f"captured in JAX only: {', '.join(res.jax_only_names)}")
    for key, fmt in (("precision_matrix", format_precision_matrix), ("compare_modes", format_modes)):
        if res.extras.get(key):
            out += ["", fmt(res.extras[key])]
    if res.extras.get("png"):
        out += ["", f"plot: {res.extras['png']}"]
    return "\n".join(out)


def plot_errors(res: DebugResult, path: str) -> str:
    """Error against depth (execution order), primal and tangent, log scale; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(res.modules)
    xs = list(range(n))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.16 * n + 3.0), 5.0))
    for attr, label, marker in (("primal_rel", "primal (u)", "o"), ("tangent_rel", "tangent (du/dt)", "s")):
        ys = [min(max(getattr(m, attr), FLOOR), 1e6) for m in res.modules]
        ax.semilogy(xs, ys, marker=marker, markersize=3, linewidth=1, label=label)
    ax.axhline(res.tol_primal, color="C0", linestyle="--", linewidth=0.8, label=f"tolerance u {res.tol_primal:.0e}")
    if res.tol_tangent != res.tol_primal:
        ax.axhline(res.tol_tangent, color="C1", linestyle="--", linewidth=0.8,
                   label=f"tolerance du/dt {res.tol_tangent:.0e}")
    names = [m.name or NETWORK for m in res.modules]
    for block, _, _ in res.blocks:
        if block in names:
            ax.axvline(names.index(block), color="grey", linewidth=0.5, alpha=0.6)
    if res.blamed and res.blamed in names:
        i = names.index(res.blamed)
        ax.axvline(i, color="red", linewidth=1.2, label=f"blamed: {res.blamed}")
    if n <= 90:
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=90, fontsize=5)
    else:
        ticks = [names.index(b) for b, _, _ in res.blocks if b in names]
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[t] for t in ticks], rotation=90, fontsize=6)
    ax.set_ylabel(f"max |torch - jax| / max |jax|  (0 drawn at {FLOOR:.0e})")
    ctl = f", control {res.control}" if res.control else ""
    ax.set_title(f"{res.arch} {res.variant} {res.dtype} {res.device}{ctl}: error per module, execution order")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_json(res: DebugResult, path: str, meta: dict | None = None):
    """The full debug result as strict JSON, written atomically."""
    write_json_file(path, {"meta": meta or {}, **res.as_dict()})  # non-finite numbers as "inf" / "nan"


# ----------------------------------------------------------------------------------
# `python -m parity debug`
# ----------------------------------------------------------------------------------


def add_arguments(p):
    """The options of `python -m parity debug` (those of the parity report, plus the debugger's)."""
    p.add_argument("--arch", default="dit", help="a registered architecture (dit, flower) or package.module:NAME "
                   "(an Arch or a list of variants)")
    p.add_argument("--objective", default=None, help="the objective: a registered name (meanflow, the default) or "
                   "package.module:NAME (an Objective)")
    p.add_argument("--preset", default=None, help="preset of the architecture (default: its default preset)")
    p.add_argument("--variant", default=None, help="the first variant whose name contains this (default: the first)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a model config field by name (repeatable)")
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch", type=positive_int, default=6)
    p.add_argument("--checkpoint", default=None, help="orbax dir or .pt/.safetensors: debug these weights")
    p.add_argument("--checkpoint-key", default=None)
    p.add_argument("--control", default=None, help="inject a negative control (the objective's, e.g. "
                   "parity/core/controls.py for MeanFlow, or the architecture's own) into torch")
    p.add_argument("--jvp-engine", default=DEFAULT_ENGINE, choices=JVP_ENGINES, help="the torch objective's JVP engine")
    p.add_argument("--jvp-attention", default=DEFAULT_ATTENTION, choices=JVP_IMPLS,
                   help="the torch attention under a tangent")
    p.add_argument("--out", default="reports/debug", help="folder for the text report and the PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write the full result as JSON")
    p.add_argument("--precision-matrix", action="store_true",
                   help="float64 / float32 highest / float32 default / bfloat16 / bf16-mixed, both backends")
    p.add_argument("--compare-modes", action="store_true",
                   help="every torch JVP engine x attention implementation, eager vs torch.compile")
    p.add_argument("--no-compile", action="store_true", help="with --compare-modes: skip torch.compile")


def pick_variant(arch: str, preset: str | None, name: str | None, sets=(), objective=None) -> Variant:
    """The variant of `arch` (a registered name or package.module:NAME) under `objective`
    (None: MeanFlow) called `name`, else the first whose name contains `name` (any, when None)."""
    every = resolve_variants(arch, preset, sets, objective)
    variants = [v for v in every if not name or name in v.name]
    variants = [v for v in variants if v.name == name] or variants
    if not variants:
        raise ValueError(f"--variant {name!r}: no {arch} variant matches; variants: {[v.name for v in every]}")
    return variants[0]


def cmd_debug(args) -> int:
    """Exit status 0 when both sides agree everywhere, 1 when a divergence is found."""
    from parity.convert import checkpoints
    from parity.core.controls import get_control
    from parity.debug.modes import compare_modes, precision_matrix
    from parity.core.precision import pinned_precision, versions

    variant = pick_variant(args.arch, args.preset, args.variant, args.set, args.objective)
    control = get_control(args.control, variant.arch, variant.objective) if args.control else None
    params = None
    if args.checkpoint:
        params = checkpoints.load_params(args.checkpoint, variant.arch, variant.model_cfg, key=args.checkpoint_key)
    with pinned_precision(True) as settings:
        case = prepare_case(variant, args.dtype, args.device, seed=args.seed, batch=args.batch, params_np=params,
                            control=control, engine=args.jvp_engine, attention=args.jvp_attention)
        res = analyse(case)
    if args.precision_matrix:
        res.extras["precision_matrix"] = precision_matrix(case)
    if args.compare_modes:
        with pinned_precision(True):
            res.extras["compare_modes"] = compare_modes(case, compile=not args.no_compile)
    res.extras["png"] = plot_errors(res, os.path.join(args.out, "debug_errors.png"))
    text = format_report(res)
    print(text)
    with open(os.path.join(args.out, "debug_report.txt"), "w") as f:
        f.write(text + "\n")
    if args.json:
        meta = {"versions": versions(), "precision": settings, "args": vars(args)}
        write_json(res, args.json, meta)
        print(f"wrote {args.json}")
    return 0 if res.clean else 1
