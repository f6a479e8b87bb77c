"""The converter's layouts, value by value, against what each torch module computes.

A round trip is blind to a transpose missing in both directions, and a shape check is blind
to a reshape-instead-of-transpose of a square matrix. Here the expected torch array of each
parameter follows from the torch module that owns it (not from the converter's own kinds):
nn.Linear computes x W^T, so W = (Flax kernel [in, out])^T; nn.Conv2d takes OIHW, so
W = HWIO.transpose(3, 2, 0, 1); every other parameter is the same array.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_meanflow import dit as jdit
from jax_meanflow import flower as jf
from jax_meanflow.params import randomize_params
from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS
from parity import convert
from parity.archs.registry import get_arch
from torch_meanflow import dit as tdit
from torch_meanflow import flower as tf

jax.config.update("jax_enable_x64", True)


def _dit():
    cfg = DIT_PRESETS["tiny"]
    return cfg, randomize_params(jdit.init_dit(cfg, jax.random.PRNGKey(0), jnp.float64), seed=2), tdit.DiT(cfg)


def _flower():
    cfg = FLOWER_PRESETS["tiny"]
    return cfg, randomize_params(jf.init_flower(cfg, 0, jnp.float64), seed=1), tf.FlowerTransformer(cfg)


def _owner_kinds(model: torch.nn.Module) -> dict[str, type]:
    """torch parameter name -> the class of the module that owns it and the attribute name."""
    out = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = (type(mod), p_name)
    return out


def _expected(kind, a):
    cls, attr = kind
    if attr == "weight" and issubclass(cls, torch.nn.Linear):
        return a.T
    if attr == "weight" and issubclass(cls, torch.nn.Conv2d):
        return a.transpose(3, 2, 0, 1)
    return a


@pytest.mark.parametrize("build, table", [(_dit, "dit"), (_flower, "flower")])
def test_every_converted_array_is_the_layout_its_torch_module_needs(build, table):
    cfg, params, model = build()
    flat = convert.flatten_tree(params)
    flat = {k[len("params/"):] if k.startswith("params/") else k: v for k, v in flat.items()}
    sd = convert.jax_to_torch(params, get_arch(table).table, cfg, template=model.state_dict())
    owners = _owner_kinds(model)
    pairs = convert.expand_rules(get_arch(table).table, cfg)
    square = 0
    for jax_path, torch_name, _ in pairs:
        src = np.asarray(flat[jax_path])
        want = _expected(owners[torch_name], src)
        np.testing.assert_array_equal(sd[torch_name], want, err_msg=torch_name)
        if src.ndim == 2 and src.shape[0] == src.shape[1] and issubclass(owners[torch_name][0], torch.nn.Linear):
            square += 1
            assert not np.array_equal(sd[torch_name], src), f"{torch_name}: square kernel left untransposed"
    assert square > 0  # the network has square Linear kernels, where a reshape would go unseen by shape
    assert set(sd) == {n for _, n, _ in pairs}


def test_a_reshape_instead_of_transpose_is_caught(monkeypatch):
    """The bug a shape check cannot see on a square kernel: reshape [in, out] -> [out, in]."""
    fwd, back, rank = convert.KINDS["linear_kernel"]
    monkeypatch.setitem(convert.KINDS, "linear_kernel",
                        (lambda a: np.ascontiguousarray(a).reshape(a.shape[::-1]), back, rank))
    with pytest.raises(AssertionError, match="weight"):
        test_every_converted_array_is_the_layout_its_torch_module_needs(_dit, "dit")
