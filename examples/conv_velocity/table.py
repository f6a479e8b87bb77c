"""The conversion table of the example: Flax tree <-> torch state dict, rule by rule.

Conv kernels are HWIO in Flax and OIHW in torch ("conv_kernel"); Dense kernels [in, out]
against Linear weights [out, in] ("linear_kernel"); the label table is the same array.
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table


def _layer(jax_prefix: str, torch_prefix: str, kind: str) -> list[Rule]:
    return [Rule(f"{jax_prefix}/kernel", f"{torch_prefix}.weight", kind),
            Rule(f"{jax_prefix}/bias", f"{torch_prefix}.bias", "bias")]


RULES = (
    *_layer("time_fc1", "time_fc1", "linear_kernel"),
    *_layer("time_fc2", "time_fc2", "linear_kernel"),
    Rule("label_embed/embedding", "label_embed.weight", "embedding"),
    *_layer("conv_in", "conv_in", "conv_kernel"),
    *_layer("blocks_{i}/conv1", "blocks.{i}.conv1", "conv_kernel"),
    *_layer("blocks_{i}/modulation", "blocks.{i}.modulation", "linear_kernel"),
    *_layer("blocks_{i}/conv2", "blocks.{i}.conv2", "conv_kernel"),
    *_layer("conv_out", "conv_out", "conv_kernel"),
)

TABLE = Table(name="conv_velocity", rules=RULES, ranges=lambda cfg: {"i": range(cfg.depth)})
