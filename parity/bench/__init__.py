"""Benchmarks (`python -m parity bench`, or `python -m parity.bench`): the MeanFlow train step
against flow matching in both backends (`run`, `cases`, `measure`, `report`, `extra`) and the
op-by-op profile of a PyTorch step (`profile`)."""


def main(argv=None) -> int:
    """`python -m parity bench`: see parity/bench/run.py (imported here only when called)."""
    from parity.bench.run import main as run

    return run(argv)
