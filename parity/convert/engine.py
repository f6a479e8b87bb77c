"""Weight conversion between the Flax parameter tree and a torch state dict, driven by a table.

One declared table per architecture says, parameter by parameter, which Flax path becomes
which torch name and how the array is laid out on each side. Both directions are derived
from the same table, so they cannot drift apart.

A table is an object: an architecture's `Arch.table` holds its `Table`, and the engine takes
the object (this module imports neither backend). The built-in tables live in
`parity/convert/tables/` (dit.py, flower.py, policy.py: `TABLE = Table(...)` each); a name
is looked up through its architecture (`parity.get_arch("dit").table`), never here.
A network of your own declares its `Table` next to its `Arch` (docs/EXTENDING.md).

Table rules. `Rule(jax_path, torch_name, kind)`:
- `jax_path` is slash-separated from the root of the params tree (no leading "params"),
  e.g. "blocks/layers_{i}/attn/qkv/_flax_linear/kernel"; `torch_name` is the state-dict
  name, e.g. "blocks.{i}.attn.qkv.weight". Placeholders `{name}` must appear in both.
- A placeholder takes its values from `Table.ranges(config)` (e.g. {"i": range(depth)}):
  then the set of expected keys is known exactly. Without a config (or when the table has no
  range for it) its values are discovered from the input keys (digits only).
- `kind` says how the array layout differs (see KINDS):
    "linear_kernel"  Flax Dense kernel [in, out]   <-> torch Linear weight [out, in]
    "conv_kernel"    Flax Conv kernel [kh, kw, in, out] (HWIO) <-> torch Conv2d weight OIHW
    "bias", "scale", "embedding", "copy"   the same array on both sides
    "lead_one"       Flax [1, *s] <-> torch [*s]

Checks (every one raises an error naming the key):
- an input key that no rule matches (unexpected), or that two rules match (table bug);
- an expected key missing from the input;
- an array whose rank does not fit its kind;
- when a `template` of the target side is given (fresh init, or {name: shape}): a produced
  key the template lacks, a template key not produced, or a shape that differs.
Values are copied as NumPy arrays with their dtype preserved; the round trip is bit exact.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from meanflow_common.keys import check_keys_and_shapes
__all__ = [
    "ConversionError",
    "ConversionShapeError",
    "Rule",
    "Table",
    "KINDS",
    "flatten_tree",
    "unflatten_tree",
    "expand_rules",
    "jax_to_torch",
    "iter_jax_to_torch",
    "torch_to_jax",
]


class ConversionError(KeyError):
    """A parameter cannot be converted; the message names the key."""

    def __str__(self):  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class ConversionShapeError(ValueError):
    """A parameter has the wrong shape or rank; the message names the key."""


# ---------------------------------------------------------------------------------
# Kinds: (jax -> torch, torch -> jax, required rank or None)
# ---------------------------------------------------------------------------------


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _drop_lead_one(a: np.ndarray) -> np.ndarray:
    if a.ndim < 1 or a.shape[0] != 1:
        raise ValueError(f"kind 'lead_one' needs a leading axis of length 1 on the Flax side, got shape {a.shape}")
    return a[0]


KINDS: dict[str, tuple[Callable, Callable, int | None]] = {
    "linear_kernel": (lambda a: a.T, lambda a: a.T, 2),
    "conv_kernel": (
        lambda a: a.transpose(3, 2, 0, 1),  # HWIO -> OIHW
        lambda a: a.transpose(2, 3, 1, 0),  # OIHW -> HWIO
        4,
    ),
    "bias": (_identity, _identity, 1),
    "scale": (_identity, _identity, None),
    "embedding": (_identity, _identity, 2),
    "copy": (_identity, _identity, None),
    # Flax [1, *s] <-> torch [*s] (pMF's label table: a bare param [1, N, D] in JAX, nn.Embedding in torch)
    "lead_one": (_drop_lead_one, lambda a: a[None], None),
}


@dataclass(frozen=True)
class Rule:
    jax_path: str
    torch_name: str
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"rule {self.jax_path!r}: unknown kind {self.kind!r}; valid: {sorted(KINDS)}")
        pj, pt = _placeholders(self.jax_path), _placeholders(self.torch_name)
        if set(pj) != set(pt):
            raise ValueError(
                f"rule {self.jax_path!r} <-> {self.torch_name!r}: placeholders differ ({pj} vs {pt})"
            )


@dataclass(frozen=True)
class Table:
    """A named list of rules; `rules` may depend on the config (optional sub-modules)."""

    name: str
    rules: Sequence[Rule] | Callable[[Any], Sequence[Rule]]
    ranges: Callable[[Any], Mapping[str, Sequence[int]]] | None = field(default=None)

    def rules_for(self, config) -> list[Rule]:
        rules = self.rules(config) if callable(self.rules) else self.rules
        return list(rules)


# ---------------------------------------------------------------------------------
# Trees and arrays
# ---------------------------------------------------------------------------------


def flatten_tree(tree: Mapping, sep: str = "/") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": leaf}."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{sep}{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                walk(value, path)
            else:
                out[path] = value

    walk(tree, "")
    return out


def unflatten_tree(flat: Mapping[str, Any], sep: str = "/") -> dict:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(sep)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _to_numpy(value, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor; parity must not depend on torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            raise ConversionShapeError(f"{key}: bfloat16 has no NumPy dtype; cast to float32 first")
        value = value.numpy()
    return np.asarray(value)


def _shape_of(value) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(s) for s in value)
    return tuple(int(s) for s in value.shape)


# ---------------------------------------------------------------------------------
# Rule expansion
# ---------------------------------------------------------------------------------

_PH = re.compile(r"\{([A-Za-z_]\w*)\}")


def _placeholders(pattern: str) -> list[str]:
    return _PH.findall(pattern)


def _pattern_regex(pattern: str) -> re.Pattern:
    parts, last = [], 0
    for m in _PH.finditer(pattern):
        parts.append(re.escape(pattern[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        last = m.end()
    parts.append(re.escape(pattern[last:]))
    return re.compile("".join(parts) + r"\Z")


def expand_rules(table: Table, config=None, keys: Sequence[str] = (), side: str = "jax"):
    """Concrete (jax_path, torch_name, kind) triples of `table`.

    Placeholders take values from `table.ranges(config)`; those without a range are
    discovered from `keys` (names on `side`, "jax" or "torch").
    """
    ranges = dict(table.ranges(config)) if (table.ranges is not None and config is not None) else {}
    out: list[tuple[str, str, str]] = []
    for rule in table.rules_for(config):
        names = _placeholders(rule.jax_path)
        if not names:
            out.append((rule.jax_path, rule.torch_name, rule.kind))
            continue
        missing = [n for n in names if n not in ranges]
        if missing:
            regex = _pattern_regex(rule.jax_path if side == "jax" else rule.torch_name)
            found = [m.groupdict() for m in map(regex.match, keys) if m]
            combos = {tuple((n, int(d[n])) for n in names) for d in found}
            values = [dict(c) for c in sorted(combos)]
        else:
            values = [dict(zip(names, c)) for c in itertools.product(*(ranges[n] for n in names))]
        for v in values:
            out.append((rule.jax_path.format(**v), rule.torch_name.format(**v), rule.kind))
    seen_j, seen_t = {}, {}
    for j, t, _ in out:
        if j in seen_j:
            raise ValueError(f"table {table.name!r}: two rules produce the Flax path {j!r}")
        if t in seen_t:
            raise ValueError(f"table {table.name!r}: two rules produce the torch name {t!r}")
        seen_j[j] = seen_t[t] = True
    return out


# ---------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------


def _strip_params(tree: Mapping) -> Mapping:
    if set(tree) == {"params"} and isinstance(tree["params"], Mapping):
        return tree["params"]
    return tree


def _convert_iter(src: Mapping[str, Any], pairs, direction: str, table: Table, consume: bool = False):
    """Yield (target key, converted array) per entry of `src`; pairs: {source key: (target
    key, kind)}; direction "j2t" or "t2j"; consume: pop each source entry once converted (src
    is a dict the caller gives up). Keys are checked before the first leaf is converted."""
    src_side, dst_side = ("Flax", "torch") if direction == "j2t" else ("torch", "Flax")
    unexpected = sorted(set(src) - set(pairs))
    if unexpected:
        raise ConversionError(
            f"table {table.name!r}: unexpected {src_side} parameter {unexpected[0]!r} "
            f"(no rule matches it; {len(unexpected)} unexpected in all: {unexpected[:5]})"
        )
    missing = sorted(set(pairs) - set(src))
    if missing:
        raise ConversionError(
            f"table {table.name!r}: missing {src_side} parameter {missing[0]!r} "
            f"(needed for {dst_side} {pairs[missing[0]][0]!r}; {len(missing)} missing in all)"
        )
    return _converted(src, pairs, direction, consume)


def _converted(src, pairs, direction: str, consume: bool):
    src_side = "Flax" if direction == "j2t" else "torch"
    for key, (target, kind) in pairs.items():
        arr = _to_numpy(src.pop(key) if consume else src[key], key)
        fwd, bwd, rank = KINDS[kind]
        if rank is not None and arr.ndim != rank:
            raise ConversionShapeError(
                f"{src_side} parameter {key!r}: kind {kind!r} needs rank {rank}, got shape {arr.shape}"
            )
        try:
            moved = (fwd if direction == "j2t" else bwd)(arr)
        except ValueError as err:
            raise ConversionShapeError(f"{src_side} parameter {key!r}: {err}") from None
        # A fresh writable C-ordered copy: never aliases the source (jax arrays are read-only).
        yield target, np.array(moved, order="C", copy=True)
        del arr


def _convert(src: Mapping[str, Any], pairs, direction: str, table: Table, template,
             consume: bool = False) -> dict[str, np.ndarray]:
    """`_convert_iter` collected into {target key: array}, checked against `template`."""
    out = dict(_convert_iter(src, pairs, direction, table, consume))
    if template is not None:
        _check_template(out, template, "torch" if direction == "j2t" else "Flax", table)
    return out


def _check_template(out: Mapping[str, np.ndarray], template: Mapping, side: str, table: Table):
    try:
        check_keys_and_shapes({k: a.shape for k, a in out.items()}, {k: _shape_of(v) for k, v in template.items()},
                              f"table {table.name!r}: the converted {side} parameters against the target model",
                              " (missing: not in the input or the table; unexpected: the target model lacks it)")
    except KeyError as err:
        raise ConversionError(str(err.args[0])) from None
    except ValueError as err:
        raise ConversionShapeError(str(err)) from None


def jax_to_torch(flax_params: Mapping, table: Table, config=None, template: Mapping | None = None,
                 consume: bool = False):
    """Flax params (nested dict, optionally under "params", or flat with "/" paths) ->
    {torch name: np.ndarray}.

    `template`: the torch side's expected shapes, e.g. `model.state_dict()` of a fresh
    model or {name: shape}; when given, keys and shapes must match it exactly.
    `consume`: `flax_params` is a flat dict the caller gives up: it is emptied as it is
    converted, so each source array (e.g. a JAX gradient buffer) is freed once its copy
    exists and the conversion holds one tree plus one leaf, not two trees.
    """
    _require_table(table)
    if consume:
        _require_flat(flax_params, "jax_to_torch(consume=True)")
    src = flax_params if consume else flatten_tree(_strip_params(flax_params))
    return _convert(src, _j2t_pairs(table, config, src), "j2t", table, template, consume)


def _require_table(table) -> None:
    if not isinstance(table, Table):
        raise TypeError(f"a conversion Table is needed, got {table!r}: the architecture's own, e.g. "
                        f"parity.get_arch({table!r}).table" if isinstance(table, str) else
                        f"a conversion Table is needed, got {type(table).__name__}")


def _require_flat(params, who: str) -> None:
    if not (isinstance(params, dict) and all(not isinstance(v, Mapping) for v in params.values())):
        raise TypeError(f"{who} needs a flat dict {{'a/b/c': array}} (flatten_tree)")


def _j2t_pairs(table: Table, config, src: Mapping) -> dict:
    return {j: (t, kind) for j, t, kind in expand_rules(table, config, keys=list(src), side="jax")}


def iter_jax_to_torch(flat_params: dict, table: Table, config=None):
    """`jax_to_torch(flat_params, table, config, consume=True)` one leaf at a time: yields
    (torch name, np.ndarray), popping each source entry as it goes, so that a consumer
    reducing each leaf (e.g. to an error) never holds a converted tree. Keys are checked
    before the first leaf is yielded."""
    _require_table(table)
    _require_flat(flat_params, "iter_jax_to_torch")
    return _convert_iter(flat_params, _j2t_pairs(table, config, flat_params), "j2t", table, consume=True)


def torch_to_jax(state_dict: Mapping, table: Table, config=None, template: Mapping | None = None) -> dict:
    """{torch name: tensor or array} -> Flax params nested dict (without "params").

    `template`: the Flax side's expected tree (fresh init, arrays or shape structs), nested or
    flat with "/" paths; when given, keys and shapes must match it exactly.
    """
    _require_table(table)
    src = dict(state_dict)
    triples = expand_rules(table, config, keys=list(src), side="torch")
    pairs = {t: (j, kind) for j, t, kind in triples}
    flat_template = None
    if template is not None:
        flat_template = flatten_tree(_strip_params(template))
    return unflatten_tree(_convert(src, pairs, "t2j", table, flat_template))
