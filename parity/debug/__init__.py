"""The divergence debugger (`python -m parity debug`): capture both networks module by module
(`capture`), compare and blame (`analyse`), the precision matrix and compare modes (`modes`),
tables, plot, JSON and command line (`report`)."""
from parity.debug.analyse import *  # noqa: F401,F403
from parity.debug.analyse import __all__  # noqa: F401
