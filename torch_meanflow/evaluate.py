"""`python -m torch_meanflow.evaluate --run DIR`: the metrics of a PyTorch run (flags and
metrics in meanflow_common.evaluate.cli, identical to `python -m jax_meanflow.evaluate`)."""
from __future__ import annotations

import sys

from meanflow_common.eval_entry import run_evaluator
from torch_meanflow.train import load_run

__all__ = ["main"]


def main(argv=None) -> int:
    return run_evaluator(load_run, "torch", argv)


if __name__ == "__main__":
    sys.exit(main())
