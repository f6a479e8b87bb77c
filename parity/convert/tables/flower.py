"""Conversion table of FLOWER's flow transformer: Flax tree <-> FLOWER's torch names.

The rules depend on the FlowerConfig (action-space name, h placement, learned positions,
proprio encoder), so `TABLE.rules` is a function of the config and a config is required.
RoPE tables are constants on both sides (not parameters). A real FLOWER checkpoint holds
more than this network (Florence-2 `vlm.*`, other action spaces, the unused
`action_space_embedder`, RoPE `cos`/`sin` buffers): select this network's keys first.
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table


def _linear(jax_prefix: str, torch_prefix: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{jax_prefix}/kernel", f"{torch_prefix}.weight", "linear_kernel")]
    if bias:
        rules.append(Rule(f"{jax_prefix}/bias", f"{torch_prefix}.bias", "bias"))
    return rules


def _norm(jax_prefix: str, torch_prefix: str) -> Rule:
    return Rule(f"{jax_prefix}/scale", f"{torch_prefix}.weight", "scale")


def _embedder(jax_prefix: str, torch_prefix: str) -> list[Rule]:
    return _linear(f"{jax_prefix}/mlp_0", f"{torch_prefix}.mlp.0") + _linear(f"{jax_prefix}/mlp_2", f"{torch_prefix}.mlp.2")


def _mlp(jax_prefix: str, torch_prefix: str) -> list[Rule]:
    return _linear(f"{jax_prefix}/fc1", f"{torch_prefix}.fc1") + _linear(f"{jax_prefix}/fc2", f"{torch_prefix}.fc2")


def _block_rules() -> list[Rule]:
    j, t = "dit_{i}", "dit.{i}"
    rules = _linear(f"{j}/adaLN_modulation_1", f"{t}.adaLN_modulation.1")
    rules += _linear(f"{j}/adaLN_modulation_2", f"{t}.adaLN_modulation.2")
    rules += [_norm(f"{j}/norm{n}", f"{t}.norm{n}") for n in (1, 2, 3)]
    for layer in ("self_attn/qkv", "self_attn/proj", "cross_attn/q_proj", "cross_attn/k_proj",
                  "cross_attn/v_proj", "cross_attn/proj", "mlp/fc1", "mlp/fc2", "mlp/proj"):
        rules += _linear(f"{j}/{layer}", f"{t}.{layer.replace('/', '.')}", bias=False)
    for attn in ("self_attn", "cross_attn"):
        rules += [_norm(f"{j}/{attn}/{n}", f"{t}.{attn}.{n}") for n in ("q_norm", "k_norm")]
    return rules


def flower_rules(config) -> list[Rule]:
    """All rules for one FlowerConfig."""
    if config is None:
        raise ValueError("the flower conversion table needs the FlowerConfig (its names depend on it)")
    s = config.action_space
    rules = [_norm("cond_norm", "cond_norm")] + _linear("cond_linear", "cond_linear", bias=False)
    rules += _embedder("t_embedder", "t_embedder") + _embedder("frequency_embedder", "frequency_embedder")
    rules += _linear(f"adaln_{s}/modCX_1", f"adaln.{s}.modCX.1", bias=False)
    rules += _mlp(f"action_encoders_{s}", f"action_encoders.{s}")
    if config.h_placement == "adaln":
        rules += _embedder("h_embedder", "h_embedder")
        rules += _linear(f"action_decoders_{s}", f"action_decoders.{s}")
    else:
        jd, td = f"action_decoders_{s}", f"action_decoders.{s}"
        rules += _embedder(f"{jd}/h_embedder", f"{td}.h_embedder")
        for n in (0, 2, 4):
            rules += _linear(f"{jd}/decoder_{n}", f"{td}.decoder.{n}")
    if config.use_proprio:
        rules += _mlp(f"proprio_encoders_{s}", f"proprio_encoders.{s}")
    if config.position_mode == "learned":
        rules.append(Rule("positional_encoding", "positional_encoding", "copy"))
    return rules + _block_rules()


TABLE = Table(name="flower", rules=flower_rules, ranges=lambda config: {"i": range(config.n_layers)})
