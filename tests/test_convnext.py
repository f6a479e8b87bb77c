"""pMF's ConvNeXt-V2 pair: the official Flax tree, conversion through the declared table, equal
features and feature distances (and their input gradients) in float64, Hugging Face names."""
import numpy as np
import pytest

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
import jax.numpy as jnp  # noqa: E402

from jax_meanflow import convnext as jcn  # noqa: E402
from meanflow_common.convnext_config import CONVNEXT_PRESETS, ConvNeXtConfig  # noqa: E402
from parity.convert.engine import flatten_tree, jax_to_torch, torch_to_jax, unflatten_tree  # noqa: E402
from parity.convert.tables.convnext import TABLE  # noqa: E402
from torch_meanflow import convnext as tcn  # noqa: E402

CFG = CONVNEXT_PRESETS["tiny"]
SHAPE = (2, 36, 40, 3)  # sides not multiples of 32: the strided convs pad ("SAME")


@pytest.fixture(scope="module")
def pair():
    model = jcn.ConvNeXtV2(CFG)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(SHAPE)))["params"]
    rng = np.random.default_rng(0)
    flat = {k: rng.normal(0.0, 0.3, v.shape) for k, v in flatten_tree(shapes).items()}  # gates non-zero too
    tmodel = tcn.ConvNeXtV2(CFG).double()
    state = jax_to_torch(unflatten_tree(flat), TABLE, CFG, template=tmodel.state_dict())
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in state.items()}, strict=True)
    return model, unflatten_tree(flat), tmodel, state


def test_the_flax_tree_has_the_official_names(pair):
    keys = set(flatten_tree(pair[1]))
    for k in ("downsample_layers_0/layers_0/kernel", "downsample_layers_0/layers_1/weight",
              "downsample_layers_3/layers_0/weight", "downsample_layers_3/layers_1/kernel",
              "stages_2/layers_0/dwconv/kernel", "stages_2/layers_0/grn/gamma", "stages_0/layers_0/pwconv1/kernel",
              "norm/scale"):
        assert k in keys, k
    assert not any(k.startswith("head") for k in keys)
    assert pair[1]["stages_0"]["layers_0"]["dwconv"]["kernel"].shape == (7, 7, 1, 4)


@pytest.fixture(scope="module")
def jax_run(pair):
    """One compiled JAX call: features of a, and the weighted distance to b with its gradient in a."""
    model, params = pair[0], pair[1]
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    dist = jcn.convnext_feature_distance(model, params)

    def run(a, b):
        value, grad = jax.value_and_grad(lambda p: jnp.sum(dist(p, b) * jnp.arange(1.0, 3.0)))(a)
        return model.apply({"params": params}, a), value, grad

    return a, b, *(np.asarray(v) for v in jax.jit(run)(jnp.asarray(a), jnp.asarray(b)))


def test_features_and_distance_agree_in_float64(pair, jax_run):
    tmodel, state = pair[2], pair[3]
    a, b, fj, vj, gj = jax_run
    ft = tmodel(torch.tensor(a.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(fj, ft, rtol=0, atol=1e-10)
    dt = tcn.convnext_feature_distance(tmodel)
    at = torch.tensor(a.transpose(0, 3, 1, 2), requires_grad=True)
    vt = (dt(at, torch.tensor(b.transpose(0, 3, 1, 2))) * torch.arange(1.0, 3.0, dtype=torch.float64)).sum()
    (gt,) = torch.autograd.grad(vt, at)
    np.testing.assert_allclose(float(vj), vt.item(), rtol=1e-12)
    np.testing.assert_allclose(gj, gt.numpy().transpose(0, 2, 3, 1), rtol=0, atol=1e-10 * np.max(np.abs(gj)))
    # round trip through the table is exact
    back = flatten_tree(torch_to_jax(state, TABLE, CFG))
    assert all(np.array_equal(back[k], v) for k, v in flatten_tree(pair[1]).items())


def test_a_flipped_depthwise_kernel_is_caught(pair, jax_run):
    """Negative control: a conversion that loses the kernel's orientation is seen in the features."""
    state = pair[3]
    a, fj = jax_run[0], jax_run[2]
    bad = tcn.ConvNeXtV2(CFG).double()
    flipped = dict(state)
    flipped["stages.1.0.dwconv.weight"] = state["stages.1.0.dwconv.weight"][:, :, ::-1, :].copy()
    bad.load_state_dict({k: torch.tensor(v) for k, v in flipped.items()})
    fb = bad(torch.tensor(a.transpose(0, 3, 1, 2))).detach().numpy()
    assert np.max(np.abs(fj - fb)) > 1e-4


def _as_hf(name: str) -> str:
    """facebookresearch name -> the Hugging Face ConvNextV2 name (for the mapping test)."""
    import re

    name = re.sub(r"^downsample_layers\.0\.0\.", "convnextv2.embeddings.patch_embeddings.", name)
    name = re.sub(r"^downsample_layers\.0\.1\.", "convnextv2.embeddings.layernorm.", name)
    name = re.sub(r"^downsample_layers\.(\d)\.(\d)\.", r"convnextv2.encoder.stages.\1.downsampling_layer.\2.", name)
    name = re.sub(r"^stages\.(\d)\.(\d+)\.norm\.", r"convnextv2.encoder.stages.\1.layers.\2.layernorm.", name)
    name = re.sub(r"^stages\.(\d)\.(\d+)\.", r"convnextv2.encoder.stages.\1.layers.\2.", name)
    name = re.sub(r"\.grn\.gamma$", ".grn.weight", name)
    name = re.sub(r"\.grn\.beta$", ".grn.bias", name)
    return re.sub(r"^norm\.", "convnextv2.layernorm.", name)


def test_hugging_face_names_load(pair, tmp_path):
    tmodel = pair[2]
    hf = {_as_hf(k): v for k, v in tmodel.state_dict().items()}
    hf["classifier.weight"] = torch.zeros(3, CFG.dims[-1])
    assert "convnextv2.encoder.stages.1.downsampling_layer.1.weight" in hf
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf, path)
    state = tcn.load_convnext_state_dict(path)
    fresh = tcn.ConvNeXtV2(CFG).double()
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in tmodel.state_dict().items())
    with pytest.raises(ValueError, match="cannot read ConvNeXt weights"):
        tcn.load_convnext_state_dict(tmp_path / "missing.bin")


def test_bad_input_and_config():
    with pytest.raises(ValueError, match="ConvNeXtConfig.depths"):
        ConvNeXtConfig(depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"needs images \[B, 3, H, W\]"):
        tcn.ConvNeXtV2(CFG)(torch.zeros(1, 4, 32, 32))
