"""`python -m parity rule-sizes`: the calibrated float32 rule across network sizes.

For each size (an architecture and a preset, one variant), on the same random weights and
inputs: the JAX reference in float32 and in float64 (the truth, on the float32 weights and
inputs), then the torch port in float32 once honest and once with each negative control.
Recorded per size: every quantity's error between the sides, the reference's own float32
error, the calibrated budget, the fixed tolerance and both verdicts; per control whether it
failed and by what margin (worst error / budget). The JAX runs are shared by the controls,
which change only the torch side.

    python -m parity rule-sizes --sizes dit:tiny,dit:DiT-S/4,flower:tiny --json rule.json --plot rule.png
    python -m parity rule-sizes --combine a.json,b.json --json all.json --markdown all.md --plot all.png
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

from meanflow_common.cli_args import non_negative_int, positive_int

SIZES = "dit:tiny,dit:small,dit:DiT-S/4,dit:DiT-B/4,dit:DiT-XL/2,flower:tiny,flower:small,flower:base,flower:default"
QUANTITIES = ("u", "du_dt", "v_g", "u_tgt", "loss_per_sample", "loss", "grad")


def _controls(variant, batch: int):
    """(controls, skipped): every control that applies to the variant (the objective ones for
    any network, the network's own) and {name: why} of those that cannot show at this batch:
    the guidance-window one needs a window and, to reach both of its sides with kept
    samples, a batch of at least 3."""
    from parity.core.controls import OBJECTIVE_CONTROLS

    out = {c.name: c for c in OBJECTIVE_CONTROLS + tuple(variant.arch.controls)}
    cfg = variant.mf_cfg
    skipped = {}
    if not cfg.guidance_eq or (cfg.t_start <= 0.0 and cfg.t_end >= 1.0):
        out.pop("guidance_window_ignored", None)
    elif batch < 3 and "guidance_window_ignored" in out:
        out.pop("guidance_window_ignored")
        skipped["guidance_window_ignored"] = f"batch {batch} < 3: no kept sample on each side of the window"
    return list(out.values()), skipped


def _spilled(tree, folder: str):
    """The NumPy tree written to `folder` and read back memory-mapped (read-only): the same
    values, held by the page cache instead of the process."""
    import jax
    import numpy as np

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for i in range(len(leaves)):
        path = os.path.join(folder, f"{i}.npy")
        np.save(path, leaves[i])
        leaves[i] = None
        out.append(np.load(path, mmap_mode="r"))
    return jax.tree_util.tree_unflatten(treedef, out)


def _n_params(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(tree)))


def _row(r) -> dict:
    return {"quantity": r.quantity, "max_rel": r.max_rel, "budget": r.tol, "passed": r.passed,
            "own_err": r.info.get("own_err"), "own_rms": r.info.get("own_rms"), "rms_rel": r.info.get("rms_rel"),
            "rms_budget": r.info.get("rms_budget"), "fixed_tol": r.info.get("fixed_tol"),
            "fixed_passed": r.info.get("fixed_passed"), "where": r.where}


def measure_size(arch_name: str, preset: str, *, variant: str | None = None, batch: int = 3, seed: int = 0,
                 rule=None, controls: bool = True, trained_steps: int = 0, device: str = "cpu") -> dict:
    """One size: the honest rows and each control's verdict (see the module docstring);
    `trained_steps` > 0: the honest rows again after that many Adam steps from the standard
    initialisation (the report's "trained" variant), in "trained"."""
    from parity.archs.registry import resolve_variants
    from parity.core.harness import (objective_checks, random_params, release_memory, run_sides, run_torch,
                                     torch_state, trained_params)
    from parity.core.rule import DEFAULT_RULE

    rule = DEFAULT_RULE if rule is None else rule
    variants = resolve_variants(arch_name, preset)
    v = next((x for x in variants if variant is None or variant in x.name), None)
    if v is None:
        raise ValueError(f"no variant of {arch_name} matches {variant!r}: {[x.name for x in variants]}")
    arch = v.arch
    start = time.time()
    spill = tempfile.TemporaryDirectory(prefix="rule_sizes_")
    # The weights live on disk (memory-mapped) while the JAX sides run: at DiT-XL/2 their
    # 2.7 GB would otherwise sit beside the float64 run's weights, gradients and activations.
    params = _spilled(random_params(arch, v, seed, "float32"), spill.name)
    times: dict = {}

    def timed(label, fn, *args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            times[label] = times.get(label, 0.0) + time.time() - t0

    # the suite's pipeline; the reference's own float32 error is always measured (every row reports it)
    sides = run_sides(v, "float32", device, seed=seed, batch=batch, params_np=params, keep_compiled=False,
                      rule=rule if rule.calibrated else DEFAULT_RULE, step=timed)
    ref, own, bundle = sides.jax, sides.own, sides.bundle
    honest = objective_checks(arch, v, ref, sides.torch, "float32", device, own=own, rule=rule)
    del sides
    out = {"arch": arch.name, "preset": preset, "variant": v.name, "batch": batch, "seed": seed, "device": device,
           "n_params": _n_params(params), "rule": rule.as_dict(),
           "seconds": {"jax32": times["compile"] + times["jax float32"], "jax64_truth": times["jax float64 truth"],
                       "torch32": times["convert"] + times["torch float32"]}}
    out["honest"] = [_row(r) for r in honest]
    out["controls"] = []
    chosen, out["controls_skipped"] = _controls(v, batch) if controls else ([], {})
    for c in chosen:
        t0 = time.time()
        release_memory()
        state = torch_state(v, params, c)
        res = objective_checks(arch, v, ref, run_torch(arch, v, state, bundle, "float32", device, c), "float32",
                               device, own=own, rule=rule)
        worst = max(res, key=lambda r: r.budget_used)
        out["controls"].append({"name": c.name, "failed": [r.quantity for r in res if not r.passed],
                                "failed_fixed": [r.quantity for r in res if not r.info.get("fixed_passed", r.passed)],
                                "margin": worst.budget_used, "worst": worst.quantity,
                                "seconds": time.time() - t0})
    if trained_steps > 0:
        t0 = time.time()
        del ref, own
        params = trained_params(arch, v, seed, trained_steps, batch=batch, dtype="float32")
        sides = run_sides(v, "float32", device, seed=seed, batch=batch, params_np=params, keep_compiled=False,
                          rule=rule if rule.calibrated else DEFAULT_RULE)
        res = objective_checks(arch, v, sides.jax, sides.torch, "float32", device, own=sides.own, rule=rule)
        del sides
        worst = next(r for r in res if r.quantity == "grad")
        out["trained"] = {"steps": trained_steps, "rows": [_row(r) for r in res], "seconds": time.time() - t0,
                          "grad_leaf": {k: worst.info.get(k) for k in ("floor_scale", "own_err", "own_rms")}}
    out["seconds"]["total"] = time.time() - start
    spill.cleanup()
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def format_rows(results: list) -> str:
    """Markdown: per size the honest port's u, du/dt and gradient (error / own float32 error /
    budget), both verdicts, and the controls (failed under the rule, under the fixed table)."""
    lines = ["| network | params | quantity | error | own f32 error | budget | fixed tol | calibrated | fixed |",
             "|---|---:|---|---:|---:|---:|---:|---|---|"]
    for res in results:
        rows = [("", r) for r in res["honest"]]
        if "trained" in res:
            rows += [(f" trained{res['trained']['steps']}", r) for r in res["trained"]["rows"]]
        for label, row in rows:
            if row["quantity"] not in ("u", "du_dt", "grad"):
                continue
            lines.append(f"| {res['arch']} {res['preset']}{label} | {res['n_params'] / 1e6:.1f} M | {row['quantity']} | "
                         f"{row['max_rel']:.2e} | {row['own_err']:.2e} | {row['budget']:.2e} | {row['fixed_tol']:.0e} | "
                         f"{'pass' if row['passed'] else 'FAIL'} | {'pass' if row['fixed_passed'] else 'FAIL'} |")
    lines += ["", "| network | control | calibrated: fails | margin (error / budget) | fixed: fails |",
              "|---|---|---|---:|---|"]
    for res in results:
        for c in res["controls"]:
            lines.append(f"| {res['arch']} {res['preset']} | {c['name']} | {'yes' if c['failed'] else '**NO**'} "
                         f"({', '.join(c['failed'])}) | {c['margin']:.1f} | {'yes' if c['failed_fixed'] else '**NO**'} |")
    return "\n".join(lines)


def plot(results: list, path: str) -> None:
    """Error between the sides and the reference's own float32 error against parameter count,
    for u, du/dt and the gradient, one colour per architecture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for ax, q in zip(axes, ("u", "du_dt", "grad")):
        archs = list(dict.fromkeys(r["arch"] for r in results))  # every architecture, in order of appearance
        for arch, colour in zip(archs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4):
            pts = sorted((r["n_params"], next(x for x in r["honest"] if x["quantity"] == q)) for r in results
                         if r["arch"] == arch)
            if not pts:
                continue
            n = [p for p, _ in pts]
            ax.plot(n, [x["max_rel"] for _, x in pts], "o-", color=colour, label=f"{arch}: |torch32 - jax32|")
            ax.plot(n, [x["own_err"] for _, x in pts], "s--", color=colour, alpha=0.6,
                    label=f"{arch}: |jax32 - jax64| (own)")
            ax.plot(n, [x["budget"] for _, x in pts], ":", color=colour, alpha=0.8, label=f"{arch}: calibrated budget")
        ax.axhline(next(x["fixed_tol"] for x in results[0]["honest"] if x["quantity"] == q), color="grey", lw=1,
                   label="fixed tolerance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(q + (" (worst parameter)" if q == "grad" else ""))
        ax.set_xlabel("parameters")
    axes[0].set_ylabel("max error / max |reference|")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m parity rule-sizes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=SIZES, help="comma list of arch:preset (default: %(default)s)")
    p.add_argument("--variant", default=None, help="the variant whose name contains this (default: each first)")
    p.add_argument("--batch", type=positive_int, default=3, help="batch (default 3: the guidance window's branches need 2 kept)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--no-controls", action="store_true")
    p.add_argument("--trained-steps", type=non_negative_int, default=0,
                   help="also the honest rows after N Adam steps from the standard init (0: off)")
    p.add_argument("--combine", default=None, metavar="JSONS",
                   help="comma list of earlier --json outputs: merge them (no runs) into --json/--markdown/--plot")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    p.add_argument("--markdown", default=None)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    from meanflow_common.json_io import write_json
    from parity.core.precision import pinned_precision

    results = []
    if not args.combine:  # every arch:preset (and --variant) resolved before the first size runs
        from parity.archs.registry import resolve_variants

        for spec in args.sizes.split(","):
            arch, _, preset = spec.partition(":")
            names = [v.name for v in resolve_variants(arch, preset or None)]
            if args.variant is not None and not any(args.variant in n for n in names):
                raise ValueError(f"--sizes {spec}: no variant matches --variant {args.variant!r}; variants: {names}")
    if args.combine:
        import json

        for path in args.combine.split(","):
            with open(path) as f:
                try:
                    results += json.load(f)["sizes"]
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"--combine {path}: not a rule-sizes --json output ({err!r})") from None
        if args.json:
            write_json(args.json, {"sizes": results})
    for spec in [] if args.combine else args.sizes.split(","):
        arch, _, preset = spec.partition(":")
        with pinned_precision(True):
            res = measure_size(arch, preset or None, variant=args.variant, batch=args.batch, seed=args.seed,
                               controls=not args.no_controls, trained_steps=args.trained_steps,
                               device=args.device)
        results.append(res)
        missed = [c["name"] for c in res["controls"] if not c["failed"]]
        for name, why in res["controls_skipped"].items():
            print(f"{spec}: control {name} not run ({why})")
        if "trained" in res:
            tr = res["trained"]["rows"]
            print(f"{spec} trained{args.trained_steps}: {'pass' if all(r['passed'] for r in tr) else 'FAIL'} "
                  f"(fixed table: {'pass' if all(r['fixed_passed'] for r in tr) else 'FAIL'}); "
                  + ", ".join(f"{r['quantity']} {r['max_rel']:.1e}/{r['budget']:.1e}" for r in tr), flush=True)
        print(f"{spec}: {res['n_params'] / 1e6:.1f} M params, {res['seconds']['total']:.0f} s, honest "
              f"{'pass' if all(r['passed'] for r in res['honest']) else 'FAIL'}, controls missed: {missed or 'none'}",
              flush=True)
        if args.json:  # after every size: a long sweep keeps what it measured
            write_json(args.json, {"sizes": results})
    print(format_rows(results))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_rows(results) + "\n")
    if args.plot:
        plot(results, args.plot)
    honest_ok = all(r["passed"] for res in results for r in res["honest"] + res.get("trained", {}).get("rows", []))
    controls_ok = all(c["failed"] for res in results for c in res["controls"])
    return 0 if honest_ok and controls_ok else 1


if __name__ == "__main__":
    sys.exit(main())
