"""The compiled JAX loss-and-gradient of each configuration the harness runs.

One executable per (architecture, objective, model config, objective config, dtype, device,
XLA compile mode, parameter and input shapes), compiled ahead of time and kept until the
suite forgets it. `precompile` compiles several at once, one thread each: XLA compiles
in C++ on one core and releases the GIL, so the float32 reference and its float64 truth
compile side by side on two cores in about the time of one (docs/BENCHMARKS.md). Tracing
and lowering stay in the calling thread, one at a time.

The weights are donated: the gradients (same shapes and dtypes) are written into the
device copy of the weights, so one tree of the size of the model lives on the device, not
two. A caller never reuses the device arrays it passes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import jax

from parity.core.arch import Variant
from parity.core.aux_nets import jax_aux_nets
from parity.core.precision import jax_compiler_options
from parity.core.sides import jax_device, jax_dtype

# Most recently used last. A compiled executable of a production-size network holds
# hundreds of MB, so the suite forgets a variant's once it is done with it.
_COMPILED: dict = {}
_COMPILED_MAX = 64
_COMPILES = [0]  # executables compiled by this process (for tests of reuse)


def _loss_and_grad(variant: Variant, xla_compile: str, device: str):
    arch, objective, cfg = variant.arch, variant.objective, variant.mf_cfg
    module, _ = arch.jax_build(variant.model_cfg)

    def loss_fn(params, *inputs):
        aux = {}
        if objective.aux:  # the auxiliary networks' weights come last (parity.core.aux_nets)
            *inputs, weights = inputs
            aux = {"aux": jax_aux_nets(objective, weights)}
        out = objective.jax_loss(arch.jax_net(objective.convention, module, params), tuple(inputs), cfg, **aux)
        return out[objective.loss], out

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True), donate_argnums=0,
                   compiler_options=jax_compiler_options(xla_compile, device))


def _abstract(tree, dtype=None):
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype if dtype is None else dtype), tree)


def _key(variant: Variant, params, inputs, dtype: str, device: str, xla_compile: str) -> tuple:
    """The cache key: the configuration, the matmul precision and x64 setting in force, and
    the trees' structures and leaf shapes (the inputs' dtypes included; the weights' dtype is
    `dtype`)."""
    leaves_p, tree_p = jax.tree_util.tree_flatten(params)
    leaves_i, tree_i = jax.tree_util.tree_flatten(inputs)
    # the trace-time settings that change the executable (jax.jit keys its own cache on them)
    settings = (str(jax.config.jax_default_matmul_precision), bool(jax.config.jax_enable_x64))
    return (variant.arch, variant.objective, variant.model_cfg, variant.mf_cfg, dtype, device, xla_compile, settings,
            tree_p,
            tuple(tuple(a.shape) for a in leaves_p), tree_i, tuple((tuple(a.shape), str(a.dtype)) for a in leaves_i))


def precompile(jobs, device: str, xla_compile: str = "fast") -> list:
    """The executables of `jobs`, each (variant, params, inputs, dtype): params a tree with
    the weights' shapes (NumPy, JAX or shape structs; cast to `dtype`), inputs the JAX
    objective's in `dtype` (`Objective.jax_inputs`; MeanFlow's (x, y, noise, null_y)). The ones not
    cached are compiled concurrently; returns them in the order of `jobs`."""
    keys = [_key(v, p, i, d, device, xla_compile) for v, p, i, d in jobs]
    todo = {}
    with jax.default_device(jax_device(device)):
        for key, (v, params, inputs, dtype) in zip(keys, jobs):
            if key not in _COMPILED and key not in todo:
                fn = _loss_and_grad(v, xla_compile, device)
                todo[key] = fn.lower(_abstract(params, jax_dtype(dtype)), *_abstract(inputs))
    _COMPILES[0] += len(todo)
    if len(todo) == 1:
        (key, lowered), = todo.items()
        _COMPILED[key] = lowered.compile()
    elif todo:
        with ThreadPoolExecutor(max_workers=len(todo)) as pool:
            done = dict(zip(todo, pool.map(lambda lowered: lowered.compile(), todo.values())))
        _COMPILED.update(done)
    out = []
    for key in keys:
        _COMPILED[key] = _COMPILED.pop(key)  # most recently used last
        out.append(_COMPILED[key])
    while len(_COMPILED) > _COMPILED_MAX:
        _COMPILED.pop(next(iter(_COMPILED)))
    return out


def executable(variant: Variant, params, inputs, dtype: str, device: str, xla_compile: str = "fast"):
    """The compiled loss-and-gradient of `variant` for these weights' and inputs' shapes:
    called as exe(device params in `dtype`, *inputs) -> ((loss, {quantity: array}), grads),
    the device params donated (deleted by the call)."""
    return precompile([(variant, params, inputs, dtype)], device, xla_compile)[0]


def forget_compiled(variant: Variant, dtypes=None) -> int:
    """Drop the cached executables of `variant` (of every dtype, or of `dtypes`; every
    compile mode, device and shape), so that their memory is freed; returns how many."""
    keys = [k for k in _COMPILED if k[0] is variant.arch and k[1] is variant.objective and k[2] == variant.model_cfg
            and k[3] == variant.mf_cfg and (dtypes is None or k[4] in dtypes)]
    for k in keys:
        del _COMPILED[k]
    return len(keys)


def compile_count() -> int:
    """How many executables this process has compiled (a cache hit compiles none)."""
    return _COMPILES[0]
