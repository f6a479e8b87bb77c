"""Conversion table of the FLOWER policy (transformer + LowDimEncoder).

The torch `FlowerPolicy` holds the transformer as `model` and the built-in observation
encoder as `encoder` (`encoder.mlp.{0,2}`); the Flax twin (`jax_meanflow.policy`) has
the same tree under `model/` and `encoder/mlp_{0,2}`. The transformer's rules are the
"flower" table's, prefixed; the config is the policy's FlowerConfig.
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table
from parity.convert.tables.flower import flower_rules


def policy_rules(config) -> list[Rule]:
    rules = [Rule(f"model/{r.jax_path}", f"model.{r.torch_name}", r.kind) for r in flower_rules(config)]
    for n in (0, 2):
        rules.append(Rule(f"encoder/mlp_{n}/kernel", f"encoder.mlp.{n}.weight", "linear_kernel"))
        rules.append(Rule(f"encoder/mlp_{n}/bias", f"encoder.mlp.{n}.bias", "bias"))
    return rules


TABLE = Table(name="policy", rules=policy_rules, ranges=lambda config: {"i": range(config.n_layers)})
