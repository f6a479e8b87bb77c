"""Conversion table of pMF's ConvNeXt-V2 feature network: the official Flax tree
(`jax_meanflow.convnext`) <-> facebookresearch/ConvNeXt-V2 names (`torch_meanflow.convnext`).

Stage i has depths[i] blocks, so each stage has its own block placeholder (j0 .. j3). The GRN's
gamma / beta are [1, 1, 1, 4 dim] on both sides (channels last). There is no head: the
official forward never calls it, so the Flax tree has none (`hf_to_convnext_names` drops it).
"""
from __future__ import annotations

from parity.convert.engine import Rule, Table


def _conv(j: str, t: str) -> list[Rule]:
    return [Rule(f"{j}/kernel", f"{t}.weight", "conv_kernel"), Rule(f"{j}/bias", f"{t}.bias", "bias")]


def _dense(j: str, t: str) -> list[Rule]:
    return [Rule(f"{j}/kernel", f"{t}.weight", "linear_kernel"), Rule(f"{j}/bias", f"{t}.bias", "bias")]


def _norm(j: str, t: str) -> list[Rule]:
    return [Rule(f"{j}/weight", f"{t}.weight", "scale"), Rule(f"{j}/bias", f"{t}.bias", "bias")]


def _rules() -> list[Rule]:
    rules = _conv("downsample_layers_0/layers_0", "downsample_layers.0.0")
    rules += _norm("downsample_layers_0/layers_1", "downsample_layers.0.1")
    for k in (1, 2, 3):
        rules += _norm(f"downsample_layers_{k}/layers_0", f"downsample_layers.{k}.0")
        rules += _conv(f"downsample_layers_{k}/layers_1", f"downsample_layers.{k}.1")
    for i in range(4):
        j, t = f"stages_{i}/layers_{{j{i}}}", f"stages.{i}.{{j{i}}}"
        rules += _conv(f"{j}/dwconv", f"{t}.dwconv")
        rules += _norm(f"{j}/norm", f"{t}.norm")
        rules += _dense(f"{j}/pwconv1", f"{t}.pwconv1")
        rules += _dense(f"{j}/pwconv2", f"{t}.pwconv2")
        rules += [Rule(f"{j}/grn/gamma", f"{t}.grn.gamma", "copy"), Rule(f"{j}/grn/beta", f"{t}.grn.beta", "copy")]
    rules += [Rule("norm/scale", "norm.weight", "scale"), Rule("norm/bias", "norm.bias", "bias")]
    return rules


TABLE = Table(name="convnext", rules=tuple(_rules()),
              ranges=lambda config: {f"j{i}": range(config.depths[i]) for i in range(4)})
