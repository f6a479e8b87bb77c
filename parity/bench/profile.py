"""`python -m parity.bench.profile`: where a PyTorch train step spends its time, by ATen op.

    python -m parity.bench.profile --size dit-m --runners fm,mf --threads 1
    python -m parity.bench.profile --size flower-small --runners "fm,mf,compile mf" --top 15

Builds the benchmark's case (same weights, batch and noise as `python -m parity.bench`),
warms each runner up, times `--steps` steps of each (process CPU time, median), then
profiles one step of each with torch.profiler and prints the ops by self CPU time side by
side, with the difference to the first runner: the MeanFlow step's extra cost, op by op
(tangent GEMMs, attention JVP, elementwise tangent work, copies).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from meanflow_common.cli_args import non_negative_int, positive_int


def _profile(step) -> dict[str, tuple[float, int]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m parity.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="dit-s", help="a size of parity.bench (dit-s, dit-m, flower-small, ...)")
    p.add_argument("--runners", default="fm,mf", help="torch runners of parity.bench.cases.TORCH_VARIANTS")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--tokens", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=5)
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--top", type=positive_int, default=12, help="ops listed")
    args = p.parse_args(argv)

    import torch

    from parity.bench.run import _weights
    from parity.bench.cases import SIZES, TORCH_VARIANTS, make_case, torch_runners

    if args.size not in SIZES:
        raise SystemExit(f"unknown size {args.size!r}; available: {', '.join(SIZES)}")
    names = [n.strip() for n in args.runners.split(",") if n.strip()]
    for n in names:
        if n not in TORCH_VARIANTS:
            raise SystemExit(f"unknown runner {n!r}; available: {', '.join(TORCH_VARIANTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    case = make_case(args.size, args.batch, {"tokens": args.tokens}, False, 0)
    _, state_dict = _weights(case, 0)
    runners = torch_runners(case, state_dict, "cpu", names)
    for r in runners:
        r.step(), r.step()
    cpu = {r.name: [] for r in runners}
    for _ in range(args.steps):
        for r in runners:
            t0 = time.process_time()
            r.step()
            cpu[r.name].append(time.process_time() - t0)
    print(f"{args.size}, batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for r in runners:
        print(f"  {r.name:36s} median {1e3 * statistics.median(cpu[r.name]):9.1f} ms CPU")
    tables = {r.name: _profile(r.step) for r in runners}
    base = runners[0].name
    ops = sorted({k for t in tables.values() for k in t}, key=lambda k: -max(t.get(k, (0, 0))[0] for t in tables.values()))
    last = runners[-1].name
    head = "".join(f"{n[:22]:>24s}" for n in tables) + (f"{'last - first':>20s}" if len(tables) > 1 else "")
    print(f"\nself CPU ms per op (calls) in one profiled step\n{'op':42s}{head}")
    for k in ops[:args.top]:
        cells = "".join(f"{tables[n].get(k, (0.0, 0))[0]:14.1f} ({tables[n].get(k, (0.0, 0))[1]:4d}) " for n in tables)
        diff = tables[last].get(k, (0.0, 0))[0] - tables[base].get(k, (0.0, 0))[0]
        print(f"{k[:42]:42s}{cells}" + (f"{diff:+20.1f}" if len(tables) > 1 else ""))
    totals = {n: sum(v[0] for v in t.values()) for n, t in tables.items()}
    print(f"{'total':42s}" + "".join(f"{totals[n]:14.1f}        " for n in tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
