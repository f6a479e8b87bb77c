"""Argument types shared by every command line of the project (argparse `type=`).

An out-of-range number is refused by argparse itself, before any work starts, with
"argument --batch: must be an integer >= 1, got '0'" (exit status 2), the same wording in the
trainers' evaluators, the parity report, its debugger, the benchmarks and the training parity.
"""
from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["int_at_least", "positive_int", "non_negative_int"]


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
