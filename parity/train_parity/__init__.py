"""Train parity (`python -m parity train-parity`, or `python -m parity.train_parity`): the two
trainers from one converted initial state follow the same trajectory."""
from parity.train_parity.run import *  # noqa: F401,F403
from parity.train_parity.run import __all__  # noqa: F401
