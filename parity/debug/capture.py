"""Per-module capture of the network call inside the objective's JVP, on both sides.

The divergence debugger (parity/debug/analyse.py) needs, for every module of the network, its
output AND its input, each as primal and as JVP tangent, at the primals and tangents of the
objective's JVP (`Objective.jvp_point`; MeanFlow: primals (z_t, t, r), tangents
(v_g, 1, 0), the network called as `Objective.jvp_call` says), under the same name on both
sides:

- JAX: `flax.linen.intercept_methods` records each module's `__call__` inside a function
  differentiated with `jax.jvp`, so the recorded values come out with their tangents. The
  function is jitted and cached per configuration (one compile, reused by every control).
- PyTorch: forward hooks under `torch.autograd.forward_ad` dual tensors; `unpack_dual` in
  the hook splits primal and tangent (hooks under `torch.func.jvp` would see
  functorch-wrapped tensors they cannot read). The tangents are those of the objective's
  JVP engine (`JvpOptions`): engine "rules" runs under the objective's own tangent rules,
  engine "torch.func" under PyTorch's forward-mode formulas (the ones torch.func.jvp uses);
  the JVP attention implementation is the one the run's `JvpOptions` name.

Names: the torch module name is the common name ("" = the whole network). The mapping
Flax path <-> torch name is derived from the architecture's conversion table (a rule
`blocks/layers_{i}/attn/qkv/_flax_linear/kernel` <-> `blocks.{i}.attn.qkv.weight` gives the
modules `blocks/layers_0/attn/qkv` <-> `blocks.0.attn.qkv` and their ancestors), plus the
architecture's `Arch.module_map` (parameter-free modules such as norms without affine, Flax
wrapper levels, the repeated block).
Modules that exist on one side only (torch's GELU/SiLU modules, Flax's `_flax_linear`
wrappers) are not compared. A module called k > 1 times gets the names `name`, `name#1`, ...

All captured arrays are float64 NumPy in the JAX layout (images NHWC).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import re
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from flax import linen as nn

from parity import convert
from parity.core.arch import Arch, Variant
from parity.core.objective import JvpPoint
from parity.core.sides import from_torch, jax_device, jax_dtype, to_torch_tensor, torch_dtype
from torch_meanflow.attention import jvp_attention
from torch_meanflow.jvp_rules import TangentRules
from torch_meanflow.objective import JvpOptions

DEFAULT_JVP = JvpOptions()
DEFAULT_ENGINE, DEFAULT_ATTENTION = DEFAULT_JVP.engine, DEFAULT_JVP.attention


@dataclass(frozen=True)
class ModuleMap:
    """Concrete Flax module path <-> torch module name for one configuration."""

    jax_to_torch: dict
    blocks: tuple  # torch names of the repeated blocks, in order

    @property
    def torch_to_jax(self) -> dict:
        return {t: j for j, t in self.jax_to_torch.items()}


def _expand(pattern_pairs, ranges: dict):
    for jp, tp in pattern_pairs:
        names = sorted(set(re.findall(r"\{(\w+)\}", jp + tp)))
        for combo in itertools.product(*(ranges[n] for n in names)):
            values = dict(zip(names, combo))
            yield jp.format(**values), tp.format(**values)


def _ancestors(jpath: str, tname: str):
    """(jpath, tname) and the pairs of ancestors that spell each other, innermost first.

    A Flax segment matches one torch segment of the same name, `layers_N` matches `N`
    (nn.Sequential), and `name_key` matches the two torch segments `name.key` (Flax names
    dict/list attributes `attr_key`, torch nests ModuleDict/ModuleList).
    """
    js = jpath.split("/") if jpath else []
    ts = tname.split(".") if tname else []
    yield jpath, tname
    while js:
        s = js[-1]
        seq = re.fullmatch(r"layers_(\d+)", s)
        if ts and (ts[-1] == s or (seq and ts[-1] == seq.group(1))):
            n = 1
        elif len(ts) >= 2 and s == f"{ts[-2]}_{ts[-1]}":
            n = 2
        else:
            return
        js, ts = js[:-1], ts[:-n]
        yield "/".join(js), ".".join(ts)


@functools.lru_cache(maxsize=32)
def module_map(arch: Arch, model_cfg) -> ModuleMap:
    """The module mapping of one configuration, derived from its conversion table and the
    architecture's `module_map` (extra pairs, wrapper levels, the repeated block)."""
    table = arch.table
    extra = arch.module_map
    ranges = dict(table.ranges(model_cfg)) if table.ranges is not None else {}
    leaves = []
    for jax_param, torch_param, _ in convert.expand_rules(table, model_cfg):
        jmod = jax_param.rsplit("/", 1)[0] if "/" in jax_param else ""
        tmod = torch_param.rsplit(".", 1)[0] if "." in torch_param else ""
        segs = jmod.split("/") if jmod else []
        while segs and segs[-1] in extra.wrappers:
            segs.pop()
        leaves.append(("/".join(segs), tmod))
    leaves += list(_expand(extra.pairs, ranges))
    leaves.append(("", ""))
    j2t: dict[str, str] = {}
    t2j: dict[str, str] = {}
    for jp, tp in leaves:
        for j, t in _ancestors(jp, tp):
            if j2t.get(j, t) != t or t2j.get(t, j) != j:
                raise ValueError(f"module map of {arch.name!r}: {j!r} <-> {t!r} conflicts with "
                                 f"{j!r} <-> {j2t.get(j)!r} / {t2j.get(t)!r} <-> {t!r}")
            j2t[j], t2j[t] = t, j
    blocks = tuple(t for _, t in _expand([("", extra.block)], ranges)) if extra.block else ()
    return ModuleMap(j2t, blocks)


# ----------------------------------------------------------------------------------
# Captures
# ----------------------------------------------------------------------------------


@dataclass
class Record:
    """One call of one module: float leaves of its output and of its positional inputs."""

    name: str
    out_primal: list
    out_tangent: list
    in_primal: list
    in_tangent: list


@dataclass
class Capture:
    side: str
    records: list = field(default_factory=list)

    @property
    def names(self) -> list:
        return [r.name for r in self.records]


def _number_calls(names: list) -> list:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}#{k}")
    return out


# The network call inside the objective's JVP (float64, JAX layout): parity.core.objective.JvpPoint.
NetInputs = JvpPoint


def net_inputs(arch: Arch, variant: Variant, bundle, ref_terms) -> JvpPoint:
    """Primals and tangents of the objective's JVP from the bundle and the reference's terms
    (`Objective.jvp_point`); an objective without one is refused, naming it."""
    objective = variant.objective
    if objective.jvp_point is None:
        raise ValueError(f"objective {objective.name} declares no JVP point (Objective.jvp_point / jvp_call), "
                         f"which the module-by-module debugger needs")
    return dataclasses.replace(objective.jvp_point(variant, bundle, ref_terms), objective=objective)


def _side_fixed(point: JvpPoint, cast) -> dict:
    return {k: cast(a) for k, a in point.fixed.items()}


def _is_float(x) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and jnp.issubdtype(x.dtype, jnp.floating)


def _jax_leaves(tree) -> list:
    return [x for x in jax.tree_util.tree_leaves(tree) if _is_float(x)]


@functools.lru_cache(maxsize=16)
def _jax_capture_fn(arch: Arch, model_cfg, objective):
    """Jitted (params, primals, tangents, fixed, y) -> ((outs, ins), (d_outs, d_ins)) and the
    Flax paths of the records (filled when the function is traced)."""
    module, _ = arch.jax_build(model_cfg)
    wanted = set(module_map(arch, model_cfg).jax_to_torch)
    paths: list[str] = []

    def run(params, primals, tangents, fixed, y):
        def net(*primals):
            rec = []

            def record(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                path = "/".join(context.module.path)
                if context.method_name == "__call__" and path in wanted:
                    rec.append((path, _jax_leaves(out), _jax_leaves(args)))
                return out

            # through the Arch's own entry point, as the check calls the network; jit off inside,
            # so an entry point that jits (and has traced these shapes before) still runs the
            # modules, whose calls are recorded as they run
            with nn.intercept_methods(record), jax.disable_jit():
                objective.jvp_call(arch.jax_net(objective.convention, module, params), primals, fixed, y)
            paths[:] = [p for p, _, _ in rec]
            return [o for _, o, _ in rec], [i for _, _, i in rec]

        return jax.jvp(net, tuple(primals), tuple(tangents))

    return jax.jit(run), paths


def _np64(a) -> np.ndarray:
    return np.asarray(np.asarray(a).astype(np.float64))


def jax_capture(arch: Arch, variant: Variant, params_np: dict, inputs: NetInputs, dtype: str,
                device: str = "cpu") -> Capture:
    """Every mapped module of the JAX network, primal and tangent, in execution order."""
    jdt = jax_dtype(dtype)
    fn, paths = _jax_capture_fn(arch, variant.model_cfg, variant.objective)
    with jax.default_device(jax_device(device)):
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jdt), params_np)
        primals, tangents, fixed, y = jax_point(arch, inputs, dtype)
        (outs, ins), (d_outs, d_ins) = fn(params, primals, tangents, fixed, y)
    j2t = module_map(arch, variant.model_cfg).jax_to_torch
    names = _number_calls([j2t[p] for p in paths])
    cap = Capture("jax")
    for name, o, do, i, di in zip(names, outs, d_outs, ins, d_ins):
        cap.records.append(Record(name, [_np64(a) for a in o], [_np64(a) for a in do],
                                  [_np64(a) for a in i], [_np64(a) for a in di]))
    return cap


def _torch_leaves(x) -> list:
    if torch.is_tensor(x):
        return [x] if x.is_floating_point() else []
    if isinstance(x, (tuple, list)):
        return [leaf for item in x for leaf in _torch_leaves(item)]
    if isinstance(x, dict):
        return [leaf for item in x.values() for leaf in _torch_leaves(item)]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [leaf for f in dataclasses.fields(x) for leaf in _torch_leaves(getattr(x, f.name))]
    return []


def jax_point(arch: Arch, point: JvpPoint, dtype: str):
    """(primals, tangents, fixed, y) of a JVP point as JAX arrays of `dtype` (JAX layout)."""
    jdt = jax_dtype(dtype)
    primals = tuple(jnp.asarray(a, jdt) for a in point.primals)
    tangents = tuple(jnp.asarray(a, jdt) for a in point.tangents)
    return primals, tangents, _side_fixed(point, lambda a: jnp.asarray(a, jdt)), arch.jax_y(point.y, jdt)


def torch_point(arch: Arch, point: JvpPoint, dtype: str, device: str = "cpu"):
    """(primals, tangents, fixed, y) of a JVP point as torch tensors (data in torch's layout)."""
    primals = tuple(to_torch_tensor(arch, a, dtype, device, data=d) for a, d in zip(point.primals, point.data))
    tangents = tuple(to_torch_tensor(arch, a, dtype, device, data=d) for a, d in zip(point.tangents, point.data))
    fixed = _side_fixed(point, lambda a: to_torch_tensor(arch, a, dtype, device))
    return primals, tangents, fixed, arch.torch_y(point.y, torch_dtype(dtype), device)


def torch_inputs(arch: Arch, inputs: JvpPoint, dtype: str, device: str = "cpu"):
    """(primals, tangents, fixed, y) as torch tensors in the torch layout (`torch_point`)."""
    return torch_point(arch, inputs, dtype, device)


def torch_capture(arch: Arch, variant: Variant, module: torch.nn.Module, inputs: NetInputs, dtype: str,
                  device: str = "cpu", jvp: JvpOptions = DEFAULT_JVP) -> Capture:
    """Every mapped module of the torch network, primal and tangent, in hook order.

    jvp.engine "rules": the tangents of the objective's default JVP engine (its tangent rules
    for linear/conv layers and arithmetic; torch_meanflow.jvp_rules.TangentRules), so a
    wrong rule shows up at its module; "torch.func": PyTorch's own forward-mode formulas;
    jvp.attention: the attention implementation under the tangent.
    """
    if not isinstance(jvp, JvpOptions):
        raise TypeError(f"jvp must be a torch_meanflow.objective.JvpOptions, got {type(jvp).__name__}")
    wanted = set(module_map(arch, variant.model_cfg).torch_to_jax)
    rec = []

    def split(leaves):
        primal, tangent = [], []
        for x in leaves:
            p, d = fwAD.unpack_dual(x)
            d = torch.zeros_like(p) if d is None else d
            primal.append(from_torch(arch, p))
            tangent.append(from_torch(arch, d))
        return primal, tangent

    def hook(name):
        def fn(mod, args, out):
            rec.append((name, *split(_torch_leaves(out)), *split(_torch_leaves(args))))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n in wanted]
    primals, tangents, fixed, y = torch_point(arch, inputs, dtype, device)
    objective = variant.objective
    try:
        with torch.no_grad(), fwAD.dual_level(), jvp_attention(jvp.attention):
            duals = tuple(fwAD.make_dual(p, d) for p, d in zip(primals, tangents))
            with TangentRules() if jvp.engine == "rules" else contextlib.nullcontext():
                # the Arch's entry point in the objective's convention, as the check calls it
                objective.jvp_call(arch.torch_net(objective.convention, module), duals, fixed, y)
    finally:
        for h in handles:
            h.remove()
    names = _number_calls([n for n, *_ in rec])
    return Capture("torch", [Record(n, *rest) for n, (_, *rest) in zip(names, rec)])


def torch_only_modules(arch: Arch, variant: Variant, module: torch.nn.Module) -> list:
    """Torch modules with no Flax twin (activations, Sequentials): not compared. ModuleDict and
    ModuleList are left out (they never run)."""
    mapped = module_map(arch, variant.model_cfg).torch_to_jax
    skip = (torch.nn.ModuleDict, torch.nn.ModuleList)
    return [n for n, m in module.named_modules() if n not in mapped and not isinstance(m, skip)]
