"""A worked objective from outside the MeanFlow family: the continuous-time consistency
objective of sCM / TrigFlow (Lu & Song, arXiv 2410.11081), with sigma_d = 1 by default.

    python -m parity --arch examples.scm:ARCH --objective examples.scm:SCM      # passes
    python -m parity --arch examples.scm:ARCH --objective examples.scm:BROKEN   # fails; blamed: objective
    python -m parity debug --arch examples.scm:ARCH --objective examples.scm:BROKEN

Files: config.py (SCMConfig), jax_objective.py / torch_objective.py (the two pure
implementations), objective.py (the `parity.Objective`: bundle, casts, samplers, branches,
controls, the debugger's JVP call), arch.py (examples/conv_velocity's network with the F call).
Importing this package loads neither framework. Walk-through: docs/EXTENDING.md.
"""
from examples.scm.arch import ARCH
from examples.scm.config import SCMConfig
from examples.scm.objective import BROKEN, CONTROLS, F_CALL, SCM

__all__ = ["ARCH", "SCM", "BROKEN", "CONTROLS", "F_CALL", "SCMConfig"]
