"""Argument types shared by every command line of the project (argparse `type=`).

An out-of-range number is refused by argparse itself, before any work starts, with
"argument --batch: must be an integer >= 1, got '0'" (exit status 2), the same wording in the
trainers' evaluators, the parity report, its debugger, the benchmarks and the training parity.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

__all__ = ["int_at_least", "positive_int", "non_negative_int", "USAGE_ERRORS", "usage_error_exit"]

# What a command's bad input raises (the message names the flag, file, key or value): exit
# status 2 and that one line, no traceback. OSError covers a missing or unreadable file.
USAGE_ERRORS = (KeyError, ValueError, TypeError, OSError)


def int_at_least(lo: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `lo` (text such as "2.5" or "four" is refused too)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}")
        return value

    parse.__name__ = f"int >= {lo}"
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def usage_error_exit(main: Callable[[], int]) -> int:
    """`main()`'s exit status; bad input (USAGE_ERRORS, or a SystemExit carrying a message)
    is printed as one "error: ..." line on stderr and exits 2."""
    try:
        return main()
    except USAGE_ERRORS as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {text}", file=sys.stderr)
        return 2
    except SystemExit as err:
        if isinstance(err.code, str):  # raise SystemExit("usage: ...")
            print(f"error: {err.code}", file=sys.stderr)
            return 2
        raise
