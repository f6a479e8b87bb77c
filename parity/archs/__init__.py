"""The built-in architectures, registered exactly as a user's: `register_arch(ARCH)`.

    parity.archs.dit.DIT        the DiT (class-conditional images, CFG in the target)
    parity.archs.flower.FLOWER  FLOWER's flow transformer (action chunks, token conditioning)
"""
from parity.archs.dit import DIT
from parity.archs.flower import FLOWER
from parity.core.arch import register_arch

register_arch(DIT)
register_arch(FLOWER)

DEFAULT_SUITE = (DIT, FLOWER)  # `python -m parity` without --arch, in this order

__all__ = ["DIT", "FLOWER", "DEFAULT_SUITE"]
