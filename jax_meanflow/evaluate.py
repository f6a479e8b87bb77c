"""`python -m jax_meanflow.evaluate --run DIR`: the metrics of a JAX run (flags and
metrics in meanflow_common.evaluate.cli, identical to `python -m torch_meanflow.evaluate`)."""
from __future__ import annotations

import sys

from jax_meanflow.train import load_run
from meanflow_common.evaluate.cli import run_eval_cli

__all__ = ["main"]


def main(argv=None) -> int:
    return run_eval_cli(load_run, "jax", argv)


if __name__ == "__main__":
    sys.exit(main())
