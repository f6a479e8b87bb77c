"""Training methods: one `TrainMethod` object per objective the trainers can minimise.

A method is what `TrainConfig.method` names: the objective's loss, the randomness it
draws per update, and how a trained network is sampled. Built-ins:

    meanflow       MeanFlow (arXiv 2505.13447), `TrainConfig.mf`: a JVP through the network
    flow_matching  the same network with h = 0 (no JVP), Euler steps at sampling
    regression     -u(0, t=1, h=1 | cond) regressed on the data (tasks that list it)
    imf            improved MeanFlow (arXiv 2512.02012), `TrainConfig.imf`: guidance scale and
                   interval drawn per sample, the network's own v prediction as the JVP tangent;
                   its network is the iMF DiT (u and v heads); sampled with omega / t_min /
                   t_max chosen at sampling time
    pmf            pixel MeanFlow (arXiv 2601.22158), `TrainConfig.pmf`: the iMF recipe with
                   an x-predicting network (the pMF DiT)

As with tasks, the framework parts are per-backend hooks (`jax_meanflow.methods.MethodHooks`,
`torch_meanflow.methods.MethodHooks`, the same fields on both sides) named here as
"package.module:NAME" and imported only when that backend asks, so this module stays
framework-free. The trainers ask the method object; nothing outside a method's definition
branches on its name. A user's method is a `TrainMethod` passed to `register_method`
(with its hooks); tasks list the methods they support (`Task.methods`) and, where the
method needs another network family, its presets (`Task.method_presets`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from meanflow_common.backend_hooks import resolve_hooks

__all__ = ["TrainMethod", "register_method", "get_method", "registered_methods", "method_names",
           "unregister_method"]


@dataclass(frozen=True, eq=False)
class TrainMethod:
    """One training method (see the module doc). Compared by identity; registered by name.

    name: the `TrainConfig.method` it is looked up by.
    settings: the TrainConfig field holding its hyperparameters ("mf", "imf", "pmf"); an
        unprefixed `--set` field that several settings sections share goes to this one.
    hooks: {backend name: hooks object or "package.module:NAME"}.
    task_adjusts: the task's `objective(settings)` applies (a task without class labels
        turns MeanFlow's guidance and class dropout off); False: the settings as given.
    sampling_fields: the knobs a sampler call takes besides (cond, noise, num_steps), e.g.
        iMF's ("omega", "t_min", "t_max"); each defaults to the settings' `sample_<name>`.
    fixed_steps: sampled with this many steps whatever is asked (regression: 1); 0 = as asked.
    check(settings): raises ValueError on settings the trainers cannot run (called when a
        TrainConfig of this method is built, before anything is written); None: no check.
    description: one line for listings.
    """

    name: str
    settings: str
    hooks: Mapping[str, Any]
    task_adjusts: bool = True
    sampling_fields: tuple = ()
    fixed_steps: int = 0
    check: Optional[Callable[[Any], None]] = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"TrainMethod.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.fixed_steps, int) or self.fixed_steps < 0:
            raise ValueError(f"TrainMethod {self.name!r}: fixed_steps must be an int >= 0, got {self.fixed_steps!r}")

    def backend_hooks(self, backend: str):
        """The hooks object of `backend` ("jax" | "torch"), imported on first use when given as
        "package.module:NAME"."""
        return resolve_hooks(f"method {self.name!r}", self.hooks, backend)

    def sampling_defaults(self, settings) -> dict:
        """{knob: the settings' sample_<knob>} for each of `sampling_fields`."""
        return {k: getattr(settings, f"sample_{k}") for k in self.sampling_fields}


_REGISTRY: dict[str, TrainMethod] = {}
_BUILTIN: set[str] = set()


def register_method(method: TrainMethod, *, replace: bool = False, builtin: bool = False) -> TrainMethod:
    """Register `method` under its name (ValueError if taken, unless replace=True; a built-in
    cannot be replaced). Returns it."""
    if not isinstance(method, TrainMethod):
        raise TypeError(f"register_method needs a TrainMethod, got {type(method).__name__}")
    if method.name in _BUILTIN and _REGISTRY.get(method.name) is not method:
        raise ValueError(f"method {method.name!r} is built in and cannot be replaced")
    if method.name in _REGISTRY and not replace and _REGISTRY[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is already registered (pass replace=True)")
    _REGISTRY[method.name] = method
    if builtin:
        _BUILTIN.add(method.name)
    return method


def unregister_method(name: str) -> None:
    """Remove a user's method (built-ins stay)."""
    if name in _BUILTIN:
        raise ValueError(f"method {name!r} is built in")
    _REGISTRY.pop(name, None)


def get_method(name) -> TrainMethod:
    """The registered method of `name` (a TrainMethod is returned as is)."""
    if isinstance(name, TrainMethod):
        return name
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def registered_methods() -> dict[str, TrainMethod]:
    return dict(_REGISTRY)


def method_names() -> tuple:
    return tuple(_REGISTRY)


def _hooks(name: str) -> dict:
    return {"jax": f"jax_meanflow.methods:{name}", "torch": f"torch_meanflow.methods:{name}"}


MEANFLOW = register_method(TrainMethod(
    name="meanflow", settings="mf", hooks=_hooks("MEANFLOW"),
    description="MeanFlow: u(z, t, h) with a JVP target"), builtin=True)
FLOW_MATCHING = register_method(TrainMethod(
    name="flow_matching", settings="mf", hooks=_hooks("FLOW_MATCHING"),
    description="flow matching on the same network (h = 0, no JVP)"), builtin=True)
REGRESSION = register_method(TrainMethod(
    name="regression", settings="mf", hooks=_hooks("REGRESSION"), fixed_steps=1,
    description="one network call at z = 0, t = h = 1 regressed on the data"), builtin=True)
IMF = register_method(TrainMethod(
    name="imf", settings="imf", hooks=_hooks("IMF"), task_adjusts=False,
    sampling_fields=("omega", "t_min", "t_max"),
    description="improved MeanFlow: in-context guidance scale and interval, v-head tangent"), builtin=True)
def _no_perceptual(settings) -> None:
    if settings.perceptual:
        raise ValueError("pmf.lpips / pmf.convnext: the trainers build no perceptual feature networks (LPIPS, "
                         "ConvNeXt); train with pmf.lpips=false pmf.convnext=false, or call "
                         "pmf_objective.pmf_loss with your PerceptualHooks")


PMF = register_method(TrainMethod(
    name="pmf", settings="pmf", hooks=_hooks("PMF"), task_adjusts=False,
    sampling_fields=("omega", "t_min", "t_max"), check=_no_perceptual,
    description="pixel MeanFlow: the iMF recipe with an x-predicting network"), builtin=True)
