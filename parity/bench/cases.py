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

from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS, DiTConfig, MeanFlowConfig, OptimConfig
from parity.bench.measure import Runner
from parity.core.inputs import InputBundle, drop_mask_numpy, make_dit_bundle, sample_tr_numpy

# name: (arch, model config, what it is)
SIZES: dict[str, tuple[str, Any, str]] = {
    "dit-tiny": ("dit", DIT_PRESETS["tiny"], "smoke test: 2 blocks, width 64, 16 tokens"),
    "dit-s": ("dit", DiTConfig(input_size=16, patch_size=4, in_channels=4, hidden_size=128, depth=4,
                               num_heads=4, num_classes=10), "4 blocks, width 128, 16 tokens"),
    "dit-m": ("dit", DiTConfig(input_size=32, patch_size=4, in_channels=4, hidden_size=384, depth=6,
                               num_heads=6, num_classes=10), "6 blocks, width 384, 64 tokens"),
    "dit-b4": ("dit", DIT_PRESETS["DiT-B/4"], "DiT-B/4 on 32x32x4 latents: 12 blocks, width 768, 64 tokens"),
    "flower-tiny": ("flower", FLOWER_PRESETS["tiny"], "smoke test: 2 layers, width 32"),
    "flower-small": ("flower", FLOWER_PRESETS["small"], "4 layers, width 128"),
    "flower-base": ("flower", FLOWER_PRESETS["base"], "12 layers, width 512 (FLOWERVLA constructor defaults)"),
    "flower-default": ("flower", FLOWER_PRESETS["default"], "18 layers, width 1024 (conf/model/flower.yaml)"),
}
DEFAULT_SIZES = {"cpu": "dit-s,dit-m,flower-small,flower-base", "cuda": "dit-m,dit-b4,flower-base,flower-default"}
QUICK_SIZES = "dit-tiny,flower-tiny"

# The objective: no guidance by default, so MeanFlow/FM measures the JVP alone (with
# --guidance both steps also make the reference's two no-grad guidance forwards).
DIT_MF = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.1)
FLOWER_MF = MeanFlowConfig(guidance_eq="", class_dropout_prob=0.0)


@dataclass
class Case:
    name: str
    arch: str
    model_cfg: Any
    mf_cfg: MeanFlowConfig
    bundle: InputBundle
    runners: list[Runner] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


def flower_bundle(cfg, mf_cfg: MeanFlowConfig, batch: int, tokens: int, seed: int) -> InputBundle:
    """Actions in [-1, 1] [B, T, A], `tokens` conditioning tokens, noise, (t, r)."""
    rng = np.random.default_rng(seed)
    shape = (batch, cfg.act_window_size, cfg.action_dim)
    y = {"tokens": rng.standard_normal((batch, tokens, cfg.cond_dim)),
         "frequency_embeds": rng.standard_normal((batch, cfg.dit_dim))}
    x, e = np.tanh(rng.standard_normal(shape)), rng.standard_normal(shape)
    t, r = sample_tr_numpy(rng, batch, mf_cfg)
    return InputBundle("flower", x, y, e, t, r, drop_mask_numpy(rng, batch, mf_cfg.class_dropout_prob))


def make_case(name: str, batch: int, tokens: int, guidance: bool, seed: int = 0) -> Case:
    if name not in SIZES:
        raise KeyError(f"unknown size {name!r}; available: {', '.join(SIZES)}")
    arch, cfg, what = SIZES[name]
    if arch == "dit":
        mf_cfg = replace(DIT_MF, guidance_eq="cfg") if guidance else DIT_MF
        bundle = make_dit_bundle(cfg, mf_cfg, batch, seed + 1)
    else:
        mf_cfg = FLOWER_MF
        bundle = flower_bundle(cfg, mf_cfg, batch, tokens, seed + 1)
    return Case(name, arch, cfg, mf_cfg, bundle, info={"what": what, "batch": batch,
                                                       "model_cfg": dataclasses.asdict(cfg),
                                                       "meanflow_cfg": dataclasses.asdict(mf_cfg)})


def _variant(case: Case):
    from parity.core.arch import Variant

    return Variant(case.arch, case.name, case.model_cfg, case.mf_cfg)


# ----------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------


def _jax_inputs(case: Case):
    import jax
    import jax.numpy as jnp

    from jax_meanflow.objective import MeanFlowNoise
    from parity.core.arch import get_arch

    arch, b, f32 = get_arch(case.arch), case.bundle, jnp.float32
    null = arch.null_y(_variant(case), b.batch_size)
    batch = (jnp.asarray(b.x, f32), arch.jax_y(b, f32), jax.random.PRNGKey(0))
    noise = MeanFlowNoise(e=jnp.asarray(b.e, f32), t=jnp.asarray(b.t, f32), r=jnp.asarray(b.r, f32),
                          drop_mask=jnp.asarray(b.drop_mask))
    return batch, noise, (None if null is None else jnp.asarray(null, jnp.int32))


def _jax_loss_fn(case: Case, module, objective: str, null_y):
    from jax_meanflow import objective as jobj

    loss = jobj.meanflow_loss if objective == "mf" else jobj.flow_matching_loss
    if case.arch == "dit":
        from jax_meanflow.dit import make_u_fn
    else:
        from jax_meanflow.flower import make_u_fn

    def loss_fn(params, batch, noise):
        x, y, key = batch
        u_fn = make_u_fn(module, params) if case.arch == "dit" else make_u_fn(module, params, dropout_rng=key)
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
    from parity.core.arch import get_arch

    module, _ = get_arch(case.arch).jax_build(case.model_cfg)
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
    import torch

    from parity.core.arch import get_arch
    from parity.core.inputs import to_torch_data
    from torch_meanflow.objective import MeanFlowNoise

    arch, b = get_arch(case.arch), case.bundle

    def t_(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)

    null = arch.null_y(_variant(case), b.batch_size)
    x = t_(to_torch_data(case.arch, b.x))
    noise = MeanFlowNoise(e=t_(to_torch_data(case.arch, b.e)), t=t_(b.t), r=t_(b.r),
                          drop_mask=torch.as_tensor(b.drop_mask, device=device))
    null_y = None if null is None else torch.as_tensor(null, dtype=torch.long, device=device)
    return (x, arch.torch_y(b, torch.float32, device)), noise, null_y


def torch_model(case: Case, state_dict: dict, device: str):
    import torch

    from parity.core.arch import get_arch
    from parity.core.harness import load_state_dict_strict

    module = get_arch(case.arch).torch_build(case.model_cfg).to(device=device, dtype=torch.float32)
    load_state_dict_strict(module, state_dict)
    return module


def _torch_loss_fn(case: Case, objective: str, null_y, mf_cfg: MeanFlowConfig):
    from parity.core.arch import get_arch
    from torch_meanflow import objective as tobj

    loss, u_fn_of = (tobj.meanflow_loss if objective == "mf" else tobj.flow_matching_loss), get_arch(case.arch).torch_u_fn

    def loss_fn(model, batch, noise):
        x, y = batch
        return loss(u_fn_of(model), x, y, noise, mf_cfg, null_y=null_y, train=True)

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

    from torch_meanflow.attention import jvp_attention
    from torch_meanflow.objective import jvp_engine
    from torch_meanflow.train_state import create_train_state, make_train_step

    optim = OptimConfig()
    state = create_train_state(torch_model(case, state_dict, device), optim)
    batch, noise, null_y = _torch_inputs(case, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runners = []
    for name in variants:
        objective, engine, attn, path, compiled = TORCH_VARIANTS[name]
        loss_fn = _torch_loss_fn(case, objective, null_y, replace(case.mf_cfg, jvp_path=path))
        train = make_train_step(loss_fn, optim, compile=compiled)
        notes: set = set()
        result: dict = {"compiler_warnings": notes}

        def step(train=train, engine=engine, attn=attn, notes=notes, result=result):
            with jvp_engine(engine), jvp_attention(attn), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                metrics = train(state, batch, noise)
                sync()
            notes.update(str(w.message).splitlines()[0][:240] for w in caught)
            _first_metrics(result, metrics)

        def memory(loss_fn=loss_fn, engine=engine, attn=attn):
            def run():
                with jvp_engine(engine), jvp_attention(attn):
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
    from parity.core.arch import get_arch
    from parity.core.inputs import from_torch_data
    from torch_meanflow.objective import jvp_engine, meanflow_loss

    module = torch_model(case, state_dict, device)
    (x, y), noise, null_y = _torch_inputs(case, device)
    with jvp_engine(engine):
        out = meanflow_loss(get_arch(case.arch).torch_u_fn(module), x, y, noise, case.mf_cfg, null_y=null_y, train=False)
    du = from_torch_data(case.arch, out.du_dt.detach().cpu().double().numpy())
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
