"""The parity pytest plugin, registered through the `pytest11` entry point `parity` (so an
installed meanflow-parity makes it available to every test suite; loading it imports neither
framework). Opt-in: a test that asks for the `parity_check` fixture.

    def test_port(parity_check):
        parity_check(MY_ARCH, dtypes=("float64", "float32"))
        parity_check(MY_ARCH, objective=MY_OBJECTIVE, dtypes=("float64",))   # another objective

`parity_check(target, **options)` runs `parity.check(target, **options)` and raises
`parity.ParityError` (an AssertionError: the test fails; `pytest.raises(parity.ParityError)`
catches it) with the report's readable summary: the failing quantities, the worst error and the line of
the divergence debugger that blames a module. It returns the `ParityReport` when every check
passes. Tests using the fixture carry the `parity` marker (`pytest -m parity` selects them).
"""
from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "parity: a parity check of a JAX/PyTorch network pair (the parity_check fixture)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "parity_check" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.parity)


@pytest.fixture
def parity_check():
    """parity_check(target, dtypes=("float32", "float64"), device="cpu", seed=0, batch=6,
    objective=None, **options) -> ParityReport; target: an Arch, a Variant, a list of Variants
    or an --arch spec string; objective: an Objective, a registered name or package.module:NAME
    (None: MeanFlow)."""

    def run(target, dtypes=("float32", "float64"), **options):
        from parity.suite.api import check

        __tracebackhide__ = True  # the report's summary is the message, not this frame
        return check(target, dtypes=dtypes, **options).assert_ok()

    return run
