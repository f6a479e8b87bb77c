"""`python -m parity convert --arch imf-dit` / `pmf-dit`: a torch state dict with the official
torch branch's names -> an orbax tree in the official JAX layout -> back, bit for bit; the
JAX tree loads into the Flax network and gives the torch network's outputs."""
import numpy as np
import pytest
import torch

from meanflow_common.imf_config import IMF_PRESETS, PMF_PRESETS
from parity.cli import main
from torch_meanflow.imf_dit import IMFDiT
from torch_meanflow.params import randomize_params
from torch_meanflow.pmf_dit import PMFDiT


@pytest.mark.parametrize("arch, cls, cfg", [("imf-dit", IMFDiT, IMF_PRESETS["tiny"]),
                                            ("pmf-dit", PMFDiT, PMF_PRESETS["tiny"])])
def test_convert_cli_round_trip_is_bit_exact(arch, cls, cfg, tmp_path, capsys):
    import jax.numpy as jnp

    from jax_meanflow.imf_dit import load_official_params
    from parity.convert.checkpoints import load_params
    from parity.archs.registry import get_arch

    torch.manual_seed(0)
    net = randomize_params(cls(cfg), 4)  # every parameter off its (zero) initialisation
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    src, mid, back = tmp_path / "official.pt", tmp_path / "jax_tree", tmp_path / "back.pt"
    torch.save(sd, src)
    assert main(["convert", "--arch", arch, "--preset", "tiny", str(src), str(mid)]) == 0
    assert main(["convert", "--arch", arch, "--preset", "tiny", str(mid), str(back)]) == 0
    again = torch.load(back, weights_only=True)
    again = again.get("params", again) if isinstance(again, dict) and "params" in again else again
    assert sorted(again) == sorted(sd)
    for k in sd:
        assert torch.equal(again[k], sd[k]), k
    # the JAX tree is the official layout: it loads into the Flax network and computes the same
    a = get_arch(arch)
    module, _ = a.jax_build(cfg)
    tree = load_official_params(module, load_params(str(mid), a, cfg), jnp.float32)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, cfg.input_size, cfg.input_size, cfg.in_channels)).astype(np.float32)
    t, h, w = np.array([0.7, 0.4], np.float32), np.array([0.3, 0.1], np.float32), np.array([2.0, 1.0], np.float32)
    lo, hi, y = np.array([0.1, 0.0], np.float32), np.array([0.8, 1.0], np.float32), np.array([1, 3])
    out_jax = module.apply({"params": tree}, jnp.asarray(z), t, h, w, lo, hi, jnp.asarray(y, jnp.int32))[0]
    tnet = a.torch_build(cfg)
    tnet.load_state_dict(sd)
    as_t = torch.as_tensor
    out_t = tnet(as_t(z).permute(0, 3, 1, 2), as_t(t), as_t(h), as_t(w), as_t(lo), as_t(hi), as_t(y))[0]
    assert float(np.abs(np.asarray(out_jax)).max()) > 1e-3
    np.testing.assert_allclose(out_t.detach().permute(0, 2, 3, 1).numpy(), np.asarray(out_jax), rtol=2e-4, atol=2e-5)
