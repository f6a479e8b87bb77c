"""`python -m parity`: one command line with subcommands; without one it runs the parity check.

    python -m parity                       # default suite: tiny DiT + tiny FLOWER, f32 + f64, cpu (+cuda)
    python -m parity --arch dit --preset small --dtype float64 --json report.json
    python -m parity --arch dit --preset DiT-B/4 --dtype float32 --rule fixed   # the fixed float32 table alone
    python -m parity --arch mypkg.mymodule:MY_ARCH          # a network pair of your own (docs/EXTENDING.md)
    python -m parity --arch policy --preset reach --checkpoint RUN/checkpoints/N/params   # given weights
    python -m parity convert SRC DST --arch dit --preset tiny         # orbax dir <-> .pt / .safetensors
    python -m parity debug --arch dit --dtype float64 --control gelu_erf --out DIR   # where the sides part
    python -m parity bench [--quick ...]         # benchmarks (python -m parity bench --help)
    python -m parity bench-profile [...]         # op-by-op profile of a PyTorch train step
    python -m parity bench-report bench.json     # Markdown tables of a saved benchmark run
    python -m parity rule-sizes [--sizes ...]    # the calibrated float32 rule from tiny to XL/2, controls too
    python -m parity parity-cost [...]           # time and memory of the parity check, phase by phase
    python -m parity train-parity [...]          # the two trainers follow the same trajectory
    python -m parity convert-run SRC_RUN DST_RUN # a run folder of the other trainer (resume, evaluate)
    python -m parity gpu-check [--out DIR]       # every GPU measurement, one JSON + Markdown (make gpu-check)

`--arch` takes a registered name (dit, flower, policy; comma-separated; "all"), or
package.module:NAME naming an Arch, a Variant or a list of Variants importable from the
current folder.
"""
from __future__ import annotations

import importlib
import sys

# Subcommands with their own command line: (module, what). They run before JAX is imported
# (the benchmark sets XLA flags first); the check, `convert` and `debug` are parity.suite.command.
DELEGATED = {
    "bench": ("parity.bench.run", "benchmarks of the MeanFlow train step (see its --help)"),
    "bench-profile": ("parity.bench.profile", "op-by-op profile of a PyTorch train step"),
    "bench-methods": ("parity.train_parity.bench_methods", "a training method's step (iMF, pMF) against flow matching"),
    "bench-report": ("parity.bench.report", "Markdown tables of a saved benchmark JSON"),
    "rule-sizes": ("parity.bench.rule_sizes", "the calibrated float32 rule across network sizes, with the controls"),
    "parity-cost": ("parity.bench.parity_cost", "time and memory of the parity check, phase by phase"),
    "train-parity": ("parity.train_parity.run", "the JAX and torch trainers from one initial state"),
    "convert-run": ("parity.train_parity.convert_run", "carry a training run to the other backend (resumable)"),
    "gpu-check": ("parity.bench.gpu_check", "every GPU measurement in one run (skips cleanly without a GPU)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "check":  # the default command, also by name
        argv = argv[1:]
    from meanflow_common.cli_args import usage_error_exit

    if argv and argv[0] in DELEGATED:  # every subcommand: bad input is one line and exit status 2
        return usage_error_exit(lambda: importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]))
    from parity.suite.command import main as check_main

    return usage_error_exit(lambda: check_main(argv, usage=__doc__, others=DELEGATED))


if __name__ == "__main__":
    sys.exit(main())
