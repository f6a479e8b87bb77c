"""Conversion table of the pMF network: official JAX tree <-> official torch branch state dict.

As the iMF table, plus the bottleneck patch embedder (`proj1`, `proj2`) and the learned
`pos_embed`; the label table is [1, N, D] in JAX and [N, D] in torch (kind "lead_one");
the inference network has no `v_final_layer`. The official torch `rope_freqs` buffer is a
derived constant, not converted (`torch_meanflow.pmf_dit.load_official_state_dict` drops it).
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table
from parity.convert.tables.imf_dit import common_rules, conv, stack_ranges


def pmf_rules(config) -> list[Rule]:
    return conv("x_embedder/proj1", "x_embedder.proj1") + conv("x_embedder/proj2", "x_embedder.proj2") + [
        Rule("y_embedder/embedding_table/embedding", "y_embedder.embedding_table._flax_embedding.weight", "lead_one"),
        Rule("pos_embed", "pos_embed", "copy"),
    ] + common_rules(config, v_final=not (config is not None and config.eval))


TABLE = Table(name="pmf_dit", rules=pmf_rules, ranges=stack_ranges)
