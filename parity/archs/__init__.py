"""The built-in architectures and the registry (`parity.archs.registry`), registered exactly
as a user's: `register_arch(ARCH)`.

    parity.archs.dit.DIT        the DiT (class-conditional images, CFG in the target)
    parity.archs.flower.FLOWER  FLOWER's flow transformer (action chunks, token conditioning)
    parity.archs.policy.POLICY  the FLOWER policy: the transformer behind its observation encoder
    parity.archs.imf_dit.IMF_DIT  the improved MeanFlow network (`--arch imf-dit --objective imf`)
    parity.archs.pmf_dit.PMF_DIT  the pixel MeanFlow network (`--arch pmf-dit --objective pmf`)

and the built-in objectives: `parity.core.meanflow.MEANFLOW` (`--objective meanflow`, the
default), `parity.core.imf.IMF` (`imf`) and `parity.core.pmf.PMF` (`pmf`).
"""
from parity.archs.dit import DIT
from parity.archs.flower import FLOWER
from parity.archs.imf_dit import IMF_DIT
from parity.archs.pmf_dit import PMF_DIT
from parity.archs.policy import POLICY
from parity.archs.registry import register_arch, register_objective
from parity.core.imf import IMF
from parity.core.meanflow import MEANFLOW
from parity.core.pmf import PMF

# `python -m parity` without --arch runs DIT and FLOWER, in this order; the policy is its
# transformer behind an encoder (`--arch policy`).
register_arch(DIT, default_suite=True)
register_arch(FLOWER, default_suite=True)
register_arch(POLICY)
register_arch(IMF_DIT)
register_arch(PMF_DIT)
register_objective(MEANFLOW)
register_objective(IMF)
register_objective(PMF)

DEFAULT_SUITE = (DIT, FLOWER)

__all__ = ["DIT", "FLOWER", "POLICY", "IMF_DIT", "PMF_DIT", "DEFAULT_SUITE"]
