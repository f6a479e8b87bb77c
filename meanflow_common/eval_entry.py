"""The evaluators' entry point around `meanflow_common.evaluate.cli.run_eval_cli`.

`python -m {jax,torch}_meanflow.evaluate` call `run_evaluator`: the `--json` target is
checked before any run is loaded or sampled (a path below a file, or in a read-only folder,
is a usage error, exit status 2, instead of a traceback after the whole evaluation), and a
file that cannot be written later is one line, exit status 1.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from meanflow_common.train_cli import RunUsageError, check_out_dir

__all__ = ["run_evaluator"]


def run_evaluator(load_run: Callable, backend: str, argv: Optional[Sequence[str]] = None) -> int:
    """`run_eval_cli(load_run, backend, argv)` with the output files checked first."""
    from meanflow_common.evaluate.cli import build_parser, run_eval_cli

    parser = build_parser(f"python -m {backend}_meanflow.evaluate")
    args = parser.parse_args(argv)  # bad flags: exit 2 here, as run_eval_cli would
    if args.json:
        try:
            if os.path.isdir(args.json):
                raise RunUsageError(f"--json {args.json} is a folder, not a file")
            check_out_dir(os.path.dirname(os.path.abspath(args.json)), "--json folder")
        except RunUsageError as err:
            parser.error(str(err))
    try:
        return run_eval_cli(load_run, backend, argv)
    except OSError as err:  # a figure or the JSON file that cannot be written (disk full, ...)
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {(err.strerror or str(err)).lower()}{where}", file=sys.stderr)
        return 1
