"""Conversion table of the iMF network: official JAX checkpoint tree (under "net") <->
official torch branch state dict (under "net."), both without the prefix.

Rotary tables are constants on both sides (not parameters). A config is required: the
number of shared, u-head and v-head blocks (none for the inference network) come from it.
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table

_LIN = "_flax_linear"
_EMBEDDERS = ("h_embedder", "omega_embedder", "cfg_t_start_embedder", "cfg_t_end_embedder")
_TOKENS = ("class_tokens", "omega_tokens", "t_min_tokens", "t_max_tokens", "time_tokens")
STACKS = ("shared_blocks", "u_heads", "v_heads")


def linear(jax_prefix: str, torch_prefix: str, bias: bool = True) -> list[Rule]:
    rules = [Rule(f"{jax_prefix}/{_LIN}/kernel", f"{torch_prefix}.{_LIN}.weight", "linear_kernel")]
    if bias:
        rules.append(Rule(f"{jax_prefix}/{_LIN}/bias", f"{torch_prefix}.{_LIN}.bias", "bias"))
    return rules


def norm(jax_prefix: str, torch_prefix: str) -> Rule:
    return Rule(f"{jax_prefix}/kernel", f"{torch_prefix}.weight", "scale")


def conv(jax_prefix: str, torch_prefix: str) -> list[Rule]:
    return [Rule(f"{jax_prefix}/kernel", f"{torch_prefix}.weight", "conv_kernel"),
            Rule(f"{jax_prefix}/bias", f"{torch_prefix}.bias", "bias")]


def block_rules(stack: str) -> list[Rule]:
    j, t = f"{stack}_{{{stack}}}", f"{stack}.{{{stack}}}"
    rules = [norm(f"{j}/norm1", f"{t}.norm1"), norm(f"{j}/norm2", f"{t}.norm2"),
             norm(f"{j}/attn/q_norm", f"{t}.attn.q_norm"), norm(f"{j}/attn/k_norm", f"{t}.attn.k_norm"),
             Rule(f"{j}/attn_scale", f"{t}.attn_scale", "scale"), Rule(f"{j}/mlp_scale", f"{t}.mlp_scale", "scale")]
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        rules += linear(f"{j}/attn/{p}", f"{t}.attn.{p}", bias=False)
    for w in ("w1", "w2", "w3"):
        rules += linear(f"{j}/mlp/{w}", f"{t}.mlp.{w}", bias=False)
    return rules


def common_rules(config, v_final: bool = True) -> list[Rule]:
    """Everything but the patch embedder and the label table."""
    if config is None:
        raise ValueError("the iMF/pMF conversion tables need the network config (block counts depend on it)")
    rules = [Rule(tok, tok, "copy") for tok in _TOKENS]
    for emb in _EMBEDDERS:
        rules += linear(f"{emb}/mlp/layers_0", f"{emb}.mlp.0") + linear(f"{emb}/mlp/layers_2", f"{emb}.mlp.2")
    for stack in STACKS:
        rules += block_rules(stack)
    for fin in ("u_final_layer",) + (("v_final_layer",) if v_final else ()):
        rules += [norm(f"{fin}/norm", f"{fin}.norm")] + linear(f"{fin}/linear", f"{fin}.linear")
    return rules


def stack_ranges(config) -> dict:
    heads = config.aux_head_depth
    return {"shared_blocks": range(config.shared_depth), "u_heads": range(heads),
            "v_heads": range(0 if config.eval else heads)}


def imf_rules(config) -> list[Rule]:
    return conv("x_embedder/proj", "x_embedder.proj") + [
        Rule("y_embedder/embedding_table/_flax_embedding/embedding",
             "y_embedder.embedding_table._flax_embedding.weight", "embedding"),
    ] + common_rules(config)


TABLE = Table(name="imf_dit", rules=imf_rules, ranges=stack_ranges)
