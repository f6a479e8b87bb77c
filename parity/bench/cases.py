"""The benchmarked networks and the training-step runners of each backend.

A case is one network at one size. Both backends train the SAME weights (random in
float64, every parameter, converted with the parity tables) on the SAME batch and noise
(one NumPy bundle), so the loss values can be compared before timing (`Case.checks`).
Every runner is a full training step: loss (flow matching or MeanFlow), backward,
AdamW update and EMA, as the trainers run it (`jax_meanflow.train_state.train_step` under
jit; `torch_meanflow.train_state.train_step`, eager or with `torch.compile` of the loss).
The runners of one backend share one training state, so memory holds one copy of the
weights per backend.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from meanflow_common.config import MeanFlowConfig, OptimConfig
from parity.archs.registry import builtin_suite
from parity.bench.measure import Runner
from parity.core.arch import Arch, BenchSpec, Variant
from parity.core.inputs import InputBundle


@dataclass(frozen=True)
class BenchSize:
    """One benchmarked network: its Arch and the Arch's `BenchSpec` (model and objective
    configs: no guidance by default, so MeanFlow/FM measures the JVP alone; --guidance turns
    CFG on where the network has class labels)."""

    arch: Arch
    spec: BenchSpec

    @property
    def model_cfg(self):
        return self.spec.model_cfg

    @property
    def mf_cfg(self) -> MeanFlowConfig:
        return self.spec.mf_cfg

    @property
    def what(self) -> str:
        return self.spec.what

    @property
    def sampling(self) -> bool:
        return self.spec.sampler is not None


def sizes_of(archs) -> dict[str, BenchSize]:
    """Every benchmark size the architectures declare (`Arch.bench_sizes`), in order."""
    return {name: BenchSize(a, spec) for a in archs for name, spec in a.bench_sizes.items()}


SIZES: dict[str, BenchSize] = sizes_of(builtin_suite())
DEFAULT_SIZES = {"cpu": "dit-s,dit-m,flower-small,flower-base", "cuda": "dit-m,dit-b4,flower-base,flower-default"}
QUICK_SIZES = "dit-tiny,flower-tiny"


@dataclass
class Case:
    name: str
    arch: Arch
    model_cfg: Any
    mf_cfg: MeanFlowConfig
    bundle: InputBundle
    runners: list[Runner] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def variant(self) -> Variant:
        return Variant(self.arch, self.name, self.model_cfg, self.mf_cfg)


def arch_sizes(variants) -> dict[str, BenchSize]:
    """One benchmarked size per architecture of `variants` (`--arch`): its first variant's model
    and objective configs, named by the architecture."""
    out: dict[str, BenchSize] = {}
    for v in variants:
        if v.arch.name not in out:
            out[v.arch.name] = BenchSize(v.arch, BenchSpec(v.model_cfg, v.mf_cfg,
                                                           f"{v.arch.name}, variant {v.name!r} (--arch)"))
    return out


def make_case(name: str, batch: int, options: dict, guidance: bool, seed: int = 0,
              sizes: dict[str, BenchSize] | None = None) -> Case:
    """The case of size `name` (of `sizes`, default SIZES): its network, objective and one
    bundle (`options`: the command line's bundle options, e.g. {"tokens": 64}; each applies
    where the size's `BenchSpec.bundle_options` declares it)."""
    sizes = SIZES if sizes is None else sizes
    if name not in sizes:
        raise KeyError(f"unknown size {name!r}; available: {', '.join(sizes)}")
    size = sizes[name]
    arch, cfg = size.arch, size.model_cfg
    mf_cfg = replace(size.mf_cfg, guidance_eq="cfg") if guidance and arch.null_label is not None else size.mf_cfg
    variant = Variant(arch, name, cfg, mf_cfg)
    from parity.core.harness import variant_bundle  # here: the bench sets XLA flags before JAX loads

    mine = {**size.spec.bundle_options, **{k: v for k, v in options.items() if k in size.spec.bundle_options}}
    bundle = variant_bundle(variant, batch, seed, **mine)
    return Case(name, arch, cfg, mf_cfg, bundle, info={"what": size.what, "batch": batch,
                                                       "model_cfg": dataclasses.asdict(cfg),
                                                       "meanflow_cfg": dataclasses.asdict(mf_cfg)})


# ----------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------


def _jax_inputs(case: Case):
    import jax

    from parity.core.sides import jax_inputs

    x, y, noise, null_y = jax_inputs(case.arch, case.variant, case.bundle, "float32")
    return (x, y, jax.random.PRNGKey(0)), noise, null_y


def _jax_loss_fn(case: Case, module, objective: str, null_y):
    from jax_meanflow import objective as jobj

    loss = jobj.meanflow_loss if objective == "mf" else jobj.flow_matching_loss

    def loss_fn(params, batch, noise):
        x, y, key = batch
        u_fn = case.arch.checked_jax_u_fn(module, params, dropout_rng=key)
        out = loss(u_fn, x, y, noise, case.mf_cfg, null_y=null_y, train=True)
        return out.loss, out

    return loss_fn


def jax_runners(case: Case, params_np: dict, objectives=("fm", "mf"), compiler_options=None) -> list[Runner]:
    """One jitted train step per objective (compiled ahead of time; the compile time is the
    runner's first call), sharing one training state. `compiler_options` go to XLA (the
    smoke test uses {"xla_backend_optimization_level": 0}: quick compiles, slow steps)."""
    import jax
    import jax.numpy as jnp

    from jax_meanflow.train_state import create_train_state, train_step

    module, _ = case.arch.jax_build(case.model_cfg)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params_np)
    optim = OptimConfig()
    holder = [create_train_state(params, optim)]
    batch, noise, null_y = _jax_inputs(case)
    runners = []
    for objective in objectives:
        loss_fn = _jax_loss_fn(case, module, objective, null_y)
        compiled: list = []
        result: dict = {}

        def step(loss_fn=loss_fn, compiled=compiled, result=result):
            if not compiled:
                lowered = train_step.lower(holder[0], loss_fn, batch, noise, optim)
                compiled.append(lowered.compile(compiler_options=compiler_options))
            holder[0], metrics = compiled[0](holder[0], batch, noise)
            jax.block_until_ready(metrics)
            _first_metrics(result, metrics)

        def memory(compiled=compiled):
            m = compiled[0].memory_analysis()
            return {"xla_temp_bytes": getattr(m, "temp_size_in_bytes", None),
                    "xla_argument_bytes": getattr(m, "argument_size_in_bytes", None),
                    "xla_output_bytes": getattr(m, "output_size_in_bytes", None)}

        runners.append(Runner(f"jax jit {objective}", "jax", "jit", objective, step, memory_info=memory,
                              result=result))
    return runners


def _first_metrics(result: dict, metrics) -> None:
    """Keep the loss and gradient norm of a runner's first step (the cross-backend check)."""
    if "first_step" not in result:
        result["first_step"] = {k: float(metrics[k]) for k in ("loss", "grad_norm")}


# ----------------------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------------------


def _torch_inputs(case: Case, device: str):
    from parity.core.sides import torch_inputs

    x, y, noise, null_y = torch_inputs(case.arch, case.variant, case.bundle, "float32", device)
    return (x, y), noise, null_y


def torch_model(case: Case, state_dict: dict, device: str):
    """The case's torch network in float32 with the converted weights, in training mode."""
    from parity.core.sides import build_torch

    return build_torch(case.arch, case.model_cfg, state_dict, "float32", device, train=True)


def _torch_loss_fn(case: Case, objective: str, null_y, mf_cfg: MeanFlowConfig, jvp=None):
    from torch_meanflow import objective as tobj

    u_fn_of = case.arch.checked_torch_u_fn

    def loss_fn(model, batch, noise):
        x, y = batch
        if objective == "mf":
            return tobj.meanflow_loss(u_fn_of(model), x, y, noise, mf_cfg, null_y=null_y, train=True, jvp=jvp)
        return tobj.flow_matching_loss(u_fn_of(model), x, y, noise, mf_cfg, null_y=null_y, train=True)

    return loss_fn


def _saved_bytes(run) -> int:
    """Bytes autograd saves for the backward during `run()` (distinct storages)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


# variant name -> (objective, engine, attention, jvp_path, compiled)
TORCH_VARIANTS = {
    "fm": ("fm", "rules", "fused", "jvp", False),
    "mf": ("mf", "rules", "fused", "jvp", False),
    "mf torch.func+math": ("mf", "torch.func", "math", "jvp", False),  # the straightforward port
    "mf attn=math": ("mf", "rules", "math", "jvp", False),
    "mf attn=explicit": ("mf", "rules", "explicit", "jvp", False),
    "mf attn=flash": ("mf", "rules", "flash", "jvp", False),
    "mf memory_saving": ("mf", "rules", "fused", "memory_saving", False),
    "compile fm": ("fm", "rules", "fused", "jvp", True),
    "compile mf": ("mf", "rules", "fused", "jvp", True),
}


def torch_runners(case: Case, state_dict: dict, device: str, variants: list[str]) -> list[Runner]:
    """Runners for the named TORCH_VARIANTS, sharing one model and training state."""
    import torch

    from torch_meanflow.objective import JvpOptions
    from torch_meanflow.train_state import create_train_state, make_train_step

    optim = OptimConfig()
    state = create_train_state(torch_model(case, state_dict, device), optim)
    batch, noise, null_y = _torch_inputs(case, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runners = []
    for name in variants:
        objective, engine, attn, path, compiled = TORCH_VARIANTS[name]
        jvp = JvpOptions(engine, attn)
        loss_fn = _torch_loss_fn(case, objective, null_y, replace(case.mf_cfg, jvp_path=path), jvp)
        train = make_train_step(loss_fn, optim, compile=compiled)
        notes: set = set()
        result: dict = {"compiler_warnings": notes}

        def step(train=train, notes=notes, result=result):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                metrics = train(state, batch, noise)
                sync()
            notes.update(str(w.message).splitlines()[0][:240] for w in caught)
            _first_metrics(result, metrics)

        def memory(loss_fn=loss_fn):
            def run():
                loss_fn(state.model, batch, noise).loss.sum()
            return {"autograd_saved_bytes": _saved_bytes(run)}

        mode = "compile" if compiled else "eager"
        r = Runner(f"torch {mode} {name.replace('compile ', '')}", "torch", mode, objective, step,
                   variant="" if name in ("fm", "mf", "compile fm", "compile mf") else name.split(" ", 1)[1],
                   memory_info=None if compiled else memory, result=result)
        runners.append(r)
    return runners


def torch_terms(case: Case, state_dict: dict, device: str, engine: str = "rules") -> dict:
    """loss and du/dt of the MeanFlow objective (float32, train=False) for the cross-check."""
    from parity.core.sides import from_torch
    from torch_meanflow.objective import JvpOptions, meanflow_loss

    module = torch_model(case, state_dict, device)
    (x, y), noise, null_y = _torch_inputs(case, device)
    out = meanflow_loss(case.arch.checked_torch_u_fn(module), x, y, noise, case.mf_cfg, null_y=null_y, train=False,
                        jvp=JvpOptions(engine))
    du = from_torch(case.arch, out.du_dt)
    return {"loss": float(out.loss.detach()), "du_dt": du}


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    scale = float(np.abs(b).max())
    return float(np.abs(a - b).max()) / scale if scale > 0 else float(np.abs(a - b).max())


@contextlib.contextmanager
def timed(record: dict, key: str):
    t0 = time.perf_counter()
    yield
    record[key] = time.perf_counter() - t0
