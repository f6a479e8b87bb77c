"""`python -m jax_meanflow.evaluate --run DIR`: the metrics of a JAX run (flags and
metrics in meanflow_common.evaluate.cli, identical to `python -m torch_meanflow.evaluate`)."""
from __future__ import annotations

import sys

from jax_meanflow import x64
from jax_meanflow.train import load_run
from meanflow_common.eval_entry import run_evaluator

__all__ = ["main"]


def _load_run(run_dir: str, checkpoint=None, use_ema: bool = True):
    x64.enable_for_run(run_dir)  # a float64 run: before any of its arrays is created
    return load_run(run_dir, checkpoint=checkpoint, use_ema=use_ema)


def main(argv=None) -> int:
    return run_evaluator(_load_run, "jax", argv)


if __name__ == "__main__":
    sys.exit(main())
