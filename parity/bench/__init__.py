"""Benchmarks (`python -m parity bench`, or `python -m parity.bench`): the MeanFlow train step
against flow matching in both backends (`run`, `cases`, `measure`, `report`, `extra`) and the
op-by-op profile of a PyTorch step (`profile`)."""
