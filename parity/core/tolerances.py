"""The parity tolerances, in one place (the report prints them).

Errors are measured relative to the reference's (JAX's) max magnitude of each quantity:
max_rel = max|torch - jax| / max|jax|. Never loosen a value here without a measurement
and a line in the README saying why. An architecture may override some of them
(`Arch.tolerances`, with the measured reason in `Arch.tolerance_reason`).
"""
from __future__ import annotations

# float32 on CPU. For scale: the official JAX DiT against a PyTorch DiT with the
# same random weights (4 blocks, width 128) differs by 2.9e-7 in u and 4.4e-7 in du/dt.
F32 = {
    "u": 2e-6,
    "v_g": 2e-6,
    "u_tgt": 2e-6,
    "loss_per_sample": 2e-6,
    "loss": 2e-6,
    "du_dt": 1e-5,
    "grad": 1e-5,
}

TOLERANCES: dict[tuple[str, str], dict[str, float]] = {
    ("float64", "cpu"): {k: 1e-12 for k in F32},
    ("float64", "cuda"): {k: 1e-12 for k in F32},
    ("float32", "cpu"): dict(F32),
    # GPU float32 with precision pinned (TF32 off on both sides): the same budget as CPU.
    ("float32", "cuda"): dict(F32),
}

QUANTITIES = tuple(F32)


def tolerance(dtype: str, device: str, quantity: str, arch=None, tol_class: str | None = None) -> float:
    """The tolerance for `quantity` ("grad" covers every parameter's gradient); `arch`: the
    `Arch` whose overrides apply (None: the defaults), by quantity name, then by class;
    `tol_class`: the quantity's tolerance class (an objective's `Quantity.tol_class`; default
    the name itself)."""
    key = "grad" if quantity.startswith("grad") else quantity
    override = {} if arch is None else arch.tolerances.get(dtype, {})
    if key in override:
        return override[key]
    if tol_class is not None and key != "grad":
        key = tol_class
        if key in override:
            return override[key]
    try:
        return TOLERANCES[(dtype, device)][key]
    except KeyError as err:
        raise KeyError(f"no tolerance for dtype={dtype!r} device={device!r} quantity={quantity!r}") from err


def overrides(archs) -> dict[tuple[str, str], tuple[dict, str]]:
    """{(arch name, dtype): (tolerances, reason)} of the architectures in a run."""
    return {(a.name, dtype): (dict(tols), a.tolerance_reason) for a in archs for dtype, tols in a.tolerances.items()}
