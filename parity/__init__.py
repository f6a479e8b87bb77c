"""Parity between a JAX/Flax network and its PyTorch port under a training objective (MeanFlow by default).

The names a user needs (imported on first use: `import parity` itself loads neither backend):

    Arch, Variant          a network pair and one configuration of it (parity.core.arch)
    Layout, ModuleMapSpec  the data layout between the sides; the debugger's extra module pairs
    CHANNELS_LAST_TO_FIRST the NHWC <-> NCHW layout of image networks
    register_arch, get_arch  the registry (`--arch NAME`); also the `parity.archs` entry points
    BenchSpec              one benchmarked size of a network (`Arch.bench_sizes`)
    Objective, Quantity    an objective of the harness (the default MEANFLOW) and one compared output of it
    Convention, Adapter, JvpPoint   how an objective calls an Arch's network; the debugger's JVP call
    AuxNet                 a frozen second network pair of an objective (a perceptual loss's features)
    MEANFLOW               the MeanFlow objective (parity.core.meanflow)
    IMF, PMF               improved MeanFlow and pixel MeanFlow (parity.core.imf, parity.core.pmf)
    register_objective, get_objective  the objective registry (`--objective NAME`)
    MeanFlowConfig         MeanFlow's settings of a Variant
    Table, Rule            the conversion table between the Flax tree and the torch state dict
    InputBundle, sample_tr_numpy, drop_mask_numpy, cover_guidance_window   the float64 inputs an Arch builds
    check                  run the suite: check(arch_or_variants, dtypes=..., device=..., seed=..., batch=...)
    ParityReport, ParityError, CheckResult   what `check` returns / raises; one compared quantity
    Check, CHECK_GROUPS    a check beyond the objective comparison (your own, or the built-in groups)
    Float32Rule            how float32 is judged: calibrated by a float64 run of the reference (default) or fixed
    Control                a negative control (a bug injected into the torch side)
    JvpOptions             the torch side's JVP engine and attention implementation

Shapes: data x, e, u, du/dt [B, ...] (each side in its own layout); t, r, h [B]; the
conditioning y as the Arch defines it. Walk-through: docs/EXTENDING.md.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Arch": "parity.core.arch",
    "Variant": "parity.core.arch",
    "Layout": "parity.core.arch",
    "ModuleMapSpec": "parity.core.arch",
    "CHANNELS_LAST_TO_FIRST": "parity.core.arch",
    "SAME_LAYOUT": "parity.core.arch",
    "BenchSpec": "parity.core.arch",
    "Objective": "parity.core.objective",
    "Quantity": "parity.core.objective",
    "Convention": "parity.core.objective",
    "Adapter": "parity.core.objective",
    "AuxNet": "parity.core.objective",
    "JvpPoint": "parity.core.objective",
    "ObjectiveMismatch": "parity.core.objective",
    "U_FN": "parity.core.objective",
    "MEANFLOW": "parity.core.meanflow",
    "IMF": "parity.core.imf",
    "PMF": "parity.core.pmf",
    "register_objective": "parity.archs.registry",
    "get_objective": "parity.archs.registry",
    "register_arch": "parity.archs.registry",
    "get_arch": "parity.archs.registry",
    "resolve_variants": "parity.archs.registry",
    "default_variants": "parity.archs.registry",
    "Table": "parity.convert.engine",
    "Rule": "parity.convert.engine",
    "Float32Rule": "parity.core.rule",
    "InputBundle": "parity.core.inputs",
    "sample_tr_numpy": "parity.core.inputs",
    "drop_mask_numpy": "parity.core.inputs",
    "cover_guidance_window": "parity.core.inputs",
    "check": "parity.suite.api",
    "ParityReport": "parity.suite.report",
    "ParityError": "parity.suite.report",
    "Check": "parity.checks.base",
    "CHECK_GROUPS": "parity.checks.registry",
    "MeanFlowConfig": "meanflow_common.config",
    "CheckResult": "parity.core.compare",
    "Control": "parity.core.controls",
    "JvpOptions": "torch_meanflow.objective",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'parity' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
