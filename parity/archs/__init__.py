"""The built-in architectures and the registry (`parity.archs.registry`), registered exactly
as a user's: `register_arch(ARCH)`.

    parity.archs.dit.DIT        the DiT (class-conditional images, CFG in the target)
    parity.archs.flower.FLOWER  FLOWER's flow transformer (action chunks, token conditioning)
    parity.archs.policy.POLICY  the FLOWER policy: the transformer behind its observation encoder

and the built-in objective, `parity.core.meanflow.MEANFLOW` (`--objective meanflow`, the default).
"""
from parity.archs.dit import DIT
from parity.archs.flower import FLOWER
from parity.archs.policy import POLICY
from parity.archs.registry import register_arch, register_objective
from parity.core.meanflow import MEANFLOW

# `python -m parity` without --arch runs DIT and FLOWER, in this order; the policy is its
# transformer behind an encoder (`--arch policy`).
register_arch(DIT, default_suite=True)
register_arch(FLOWER, default_suite=True)
register_arch(POLICY)
register_objective(MEANFLOW)

DEFAULT_SUITE = (DIT, FLOWER)

__all__ = ["DIT", "FLOWER", "POLICY", "DEFAULT_SUITE"]
