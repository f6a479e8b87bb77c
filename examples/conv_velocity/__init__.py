"""A user-defined network pair: a small class-conditional convolutional velocity network,
written once in Flax (`flax_net.py`) and once in PyTorch (`torch_net.py`), with its own
conversion table (`table.py`) and its `Arch` (`arch.py`). Walk-through: docs/EXTENDING.md.

    python -m parity --arch examples.conv_velocity:ARCH       # passes
    python -m parity --arch examples.conv_velocity:BROKEN     # fails; the debugger blames blocks.1

Importing this package loads neither framework (the builders import them when called).
"""
from examples.conv_velocity.arch import ARCH, BROKEN, VARIANTS
from examples.conv_velocity.config import PRESETS, ConvVelocityConfig

__all__ = ["ARCH", "BROKEN", "VARIANTS", "PRESETS", "ConvVelocityConfig"]
