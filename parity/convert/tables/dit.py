"""Conversion table of the DiT: official JAX checkpoint tree <-> facebookresearch/DiT names.

The position embedding is a fixed table (a non-persistent buffer in torch, a constant in
JAX) and is not a parameter on either side. LayerNorms have no affine parameters.
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table

_LIN = "_flax_linear"


def _linear(jax_prefix: str, torch_prefix: str) -> list[Rule]:
    return [
        Rule(f"{jax_prefix}/{_LIN}/kernel", f"{torch_prefix}.weight", "linear_kernel"),
        Rule(f"{jax_prefix}/{_LIN}/bias", f"{torch_prefix}.bias", "bias"),
    ]


def _rules() -> list[Rule]:
    rules = [
        Rule("x_embedder/proj/kernel", "x_embedder.proj.weight", "conv_kernel"),
        Rule("x_embedder/proj/bias", "x_embedder.proj.bias", "bias"),
        Rule("y_embedder/embedding_table/_flax_embedding/embedding", "y_embedder.embedding_table.weight", "embedding"),
    ]
    for emb in ("t_embedder", "h_embedder"):
        rules += _linear(f"{emb}/mlp/layers_0", f"{emb}.mlp.0")
        rules += _linear(f"{emb}/mlp/layers_2", f"{emb}.mlp.2")
    block_j, block_t = "blocks/layers_{i}", "blocks.{i}"
    for jax_name, torch_name in (
        ("attn/qkv", "attn.qkv"),
        ("attn/proj", "attn.proj"),
        ("mlp/fc1", "mlp.fc1"),
        ("mlp/fc2", "mlp.fc2"),
        ("adaLN_modulation/layers_1", "adaLN_modulation.1"),
    ):
        rules += _linear(f"{block_j}/{jax_name}", f"{block_t}.{torch_name}")
    rules += _linear("final_layer/linear", "final_layer.linear")
    rules += _linear("final_layer/adaLN_modulation/layers_1", "final_layer.adaLN_modulation.1")
    return rules


TABLE = Table(name="dit", rules=tuple(_rules()), ranges=lambda config: {"i": range(config.depth)})
