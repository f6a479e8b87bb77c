"""Tables of `python -m parity.bench`: the console table per case, the targets, Markdown.

    python -m parity.bench.report bench.json        # Markdown tables of a saved run (for docs)
"""
from __future__ import annotations

import json
import sys

TARGETS = {"jax_mf_over_fm": 1.25, "torch_mf_over_fm": 1.3, "torch_over_jax_mf": 1.0, "parity_suite_s": 60.0}


def _mb(x) -> str:
    return f"{x / 2**20:8.1f}" if isinstance(x, (int, float)) else f"{'-':>8s}"


def _f(x, fmt="8.2f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) else f"{'-':>{fmt.split('.')[0]}s}"


def format_case(case: dict) -> str:
    lines = [f"{'runner':34s} {'median ms':>9s} {'cpu ms':>9s} {'min ms':>9s} {'warm-up s':>9s} "
             f"{'peak MB':>8s} {'saved MB':>8s} {'xla tmp':>8s}"]
    for r in case["runners"]:
        if "error" in r:
            lines.append(f"{r['name']:34s} failed: {r['error'][:120]}")
            continue
        mem = r.get("memory", {})
        lines.append(f"{r['name']:34s} {_f(r['wall_ms'], '9.1f')} {_f(r['cpu_ms'], '9.1f')} {_f(r['wall_min_ms'], '9.1f')} "
                     f"{_f(r['first_call_s'], '9.2f')} {_mb(mem.get('peak_bytes'))} "
                     f"{_mb(mem.get('autograd_saved_bytes'))} {_mb(mem.get('xla_temp_bytes'))}")
        if r.get("compiler_warnings"):
            lines.append(f"{'':34s} compiler: {r['compiler_warnings'][0][:110]}")
    q = case["ratios"]
    lines.append("MF/FM      " + "  ".join(f"{k} {_f(v)}" for k, v in q["mf_over_fm"].items()))
    if "ratios_cpu_time" in case:
        lines.append("MF/FM cpu  " + "  ".join(f"{k} {_f(v)}" for k, v in case["ratios_cpu_time"]["mf_over_fm"].items()))
    lines.append("torch/JAX  " + "  ".join(f"{k} {_f(v)}" for k, v in q["torch_over_jax"].items()))
    lines.append("compiled/eager " + "  ".join(f"{k} {_f(v)}" for k, v in q["compiled_over_eager"].items())
                 + f"   memory_saving/jvp {_f(q['memory_saving_over_jvp'])}"
                 + f"   rules/torch.func port {_f(q['rules_over_torch_func_port'])}")
    if case["checks"]:
        lines.append(f"checks {json.dumps(case['checks'], default=float)}")
    lines.append(f"load before/after {case['load_before']} / {case['load_after']}")
    return "\n".join(lines)


def targets(cases: list[dict], parity_rows: list[dict]) -> list[dict]:
    """Each target per case: value, limit, met."""
    rows = []
    def picks(q):
        return {"jax_mf_over_fm": q["mf_over_fm"]["jax"], "torch_mf_over_fm": q["mf_over_fm"]["torch eager"],
                "torch_over_jax_mf": q["torch_over_jax"]["mf eager"]}

    for c in cases:
        wall, cpu = picks(c["ratios"]), picks(c["ratios_cpu_time"]) if c.get("ratios_cpu_time") else {}
        for key, value in wall.items():
            rows.append({"case": c["name"], "target": key, "value": value, "value_cpu_time": cpu.get(key),
                         "limit": TARGETS[key], "met": None if value is None else value <= TARGETS[key]})
    for p in parity_rows:
        if p["setup"] == "default":
            rows.append({"case": "parity suite", "target": "parity_suite_s", "value": p["wall_s"],
                         "limit": TARGETS["parity_suite_s"], "met": p["wall_s"] <= TARGETS["parity_suite_s"]})
    return rows


def format_targets(rows: list[dict]) -> str:
    lines = ["\ntargets (median wall-time ratios, CPU-time ratio in brackets; PyTorch = eager, the trainer's default):"]
    for r in rows:
        mark = "-" if r["met"] is None else ("met" if r["met"] else "MISSED")
        lines.append(f"  {r['case']:14s} {r['target']:18s} {_f(r['value'])} ({_f(r.get('value_cpu_time'), '.2f')}) "
                     f"<= {r['limit']:<5} {mark}")
    return "\n".join(lines)


def _md_num(x, digits=1) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"


def markdown(report: dict) -> str:
    """Markdown: one table of step times and memory per case, then ratios, targets, sampling."""
    env = report["environment"]
    out = [f"Device: {env['cpu']} ({env['cpu_count']} cores){', ' + env['gpu'] if env.get('gpu') else ''}; "
           f"torch {env['torch']} ({env['torch_threads']} threads), jax {env['jax']}, flax {env.get('flax')}; "
           f"load average at start {env['load_average']}, at end {report.get('load_average_end')}.", ""]
    for c in report["cases"]:
        out += [f"**{c['name']}** ({c['info']['what']}, batch {c['info']['batch']}; load {c['load_before']} -> "
                f"{c['load_after']})", "",
                "| runner | median ms | CPU ms | warm-up s | peak MB | saved for bwd MB | XLA temp MB |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for r in c["runners"]:
            if "error" in r:
                out.append(f"| {r['name']} | failed: {r['error'][:80]} | | | | | |")
                continue
            m = r.get("memory", {})
            mb = [_md_num(m.get(k) / 2**20) if isinstance(m.get(k), (int, float)) else "-"
                  for k in ("peak_bytes", "autograd_saved_bytes", "xla_temp_bytes")]
            out.append(f"| {r['name']} | {_md_num(r['wall_ms'])} | {_md_num(r['cpu_ms'])} | "
                       f"{_md_num(r['first_call_s'], 2)} | {' | '.join(mb)} |")
        for label, q in (("wall time", c["ratios"]), ("CPU time", c.get("ratios_cpu_time"))):
            if q:
                out += ["", f"ratios ({label}): " + "; ".join(
                    f"{group} {k} {_md_num(v, 2)}" for group, d in (
                        ("MF/FM", q["mf_over_fm"]), ("torch/JAX", q["torch_over_jax"]),
                        ("compiled/eager", q["compiled_over_eager"])) for k, v in d.items() if v is not None)]
        out.append("")
    if report.get("targets"):
        out += ["| case | target | wall-time value | CPU-time value | limit | met (wall) |", "|---|---|---:|---:|---:|---|"]
        out += [f"| {t['case']} | {t['target']} | {_md_num(t['value'], 2)} | {_md_num(t.get('value_cpu_time'), 2)} | "
                f"{t['limit']} | {'-' if t['met'] is None else ('yes' if t['met'] else 'no')} |" for t in report["targets"]]
        out.append("")
    if report.get("sampling"):
        out += ["| sampling | backend | batch | steps | median ms | first call s |", "|---|---|---:|---:|---:|---:|"]
        out += [f"| {s['size']} | {s['what']} | {s['batch']} | {s['num_steps']} | {_md_num(s['median_ms'], 2)} | "
                f"{_md_num(s['first_call_s'], 2)} |" for s in report["sampling"]]
        out.append("")
    if report.get("parity_suite"):
        out += ["| parity suite setup | wall s | CPU s | passed | load before |", "|---|---:|---:|---|---|"]
        out += [f"| {p['setup']} | {_md_num(p['wall_s'])} | {_md_num(p['cpu_s'])} | {p['passed']} | "
                f"{p['load_before']} |" for p in report["parity_suite"]]
    return "\n".join(out)


def main(argv=None) -> int:
    """`python -m parity bench-report BENCH.json`: the Markdown tables of a saved run."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        raise SystemExit("usage: python -m parity bench-report BENCH.json (a file written by python -m parity bench --json)")
    print(markdown(read_report(argv[0])))
    return 0


def read_report(path: str) -> dict:
    """A saved benchmark report (`python -m parity bench --json`); a file that is not one is
    a ValueError naming it."""
    with open(path) as f:
        try:
            report = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a JSON benchmark report ({err})") from None
    if not isinstance(report, dict) or "cases" not in report:
        raise ValueError(f"{path} is not a benchmark report of python -m parity bench --json (no 'cases' entry)")
    return report


if __name__ == "__main__":
    sys.exit(main())
