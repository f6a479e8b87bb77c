"""A user's one-channel GroupNorm + FiLM network pair (examples/groupnorm_film: 8x8 images,
networks without a `train` keyword) through the check, the debugger and the converter; and
the one helper that hands arrays to torch with standard strides, whatever their layout.

Float64, batch 6, no extra checks: rounding is ~1e-15, so any failure is a bug.
"""
import json

import numpy as np
import pytest
import torch

import parity
from examples.groupnorm_film import ARCH
from parity.cli import main
from parity.convert import checkpoints
from parity.convert.arrays import as_torch, standard_strides
from parity.core.arch import CHANNELS_LAST_TO_FIRST, Layout

SPEC = "examples.groupnorm_film:ARCH"


@pytest.mark.parametrize("shape", [(6, 8, 8, 1), (6, 8, 1, 3), (6, 8, 1, 1), (2, 1, 1, 1)])
def test_arrays_reach_torch_with_standard_strides(shape):
    """One channel or one pixel wide: the NCHW transpose keeps degenerate strides in NumPy
    (np.ascontiguousarray counts it as contiguous), which torch reads as channels_last."""
    a = np.random.default_rng(0).standard_normal(shape)
    nchw = CHANNELS_LAST_TO_FIRST.to_torch(a)
    odd = Layout("a view", lambda x: x.transpose(0, 3, 1, 2), lambda x: x)  # a hook returning a view
    for arr in (nchw, odd.to_torch(a), a[:, ::-1], np.asarray(a, order="F")):
        for dtype in (torch.float64, torch.float32):
            t = as_torch(arr, dtype)
            assert t.stride() == standard_strides(t.shape) and t.dtype == dtype
            assert np.array_equal(t.double().numpy(), np.asarray(arr, np.float32 if dtype == torch.float32
                                                                 else np.float64))
    # share: standard writable arrays become the tensor's memory, others are copied
    w = np.zeros((4, 1, 3, 3))
    assert as_torch(w, torch.float64, share=True).data_ptr() == w.ctypes.data
    ro = np.zeros((4, 1, 3, 3))
    ro.flags.writeable = False
    assert as_torch(ro, torch.float64, share=True).data_ptr() != ro.ctypes.data


def test_check_passes_on_a_network_without_a_train_keyword():
    """Neither the Flax __call__ nor the torch forward takes `train`; the u_fn adapters drop it."""
    report = parity.check(ARCH, dtypes=("float64", "float32"), checks="none")
    assert report.passed, report.failure_message(blame=False)
    assert {r.variant for r in report.results} == {"cfg", "no cfg"}


@pytest.mark.parametrize("preset", ["tiny", "column"])
@pytest.mark.parametrize("engine", ["rules", "torch.func"])
def test_debugger_runs_on_one_channel_group_norm(tmp_path, preset, engine):
    """Both JVP engines, 1-channel 8x8 and 1-pixel-wide images: no divergence, every module compared."""
    out = tmp_path / "dbg"
    code = main(["debug", "--arch", SPEC, "--preset", preset, "--dtype", "float64", "--jvp-engine", engine,
                 "--out", str(out), "--json", str(out / "d.json")])
    data = json.loads((out / "d.json").read_text())
    assert code == 0 and data["clean"] and data["torch_only"] == [], data.get("diagnosis")
    assert {"norm_in", "norm", "film", "conv_out"} <= {m["name"] for m in data["modules"]}


def test_convert_round_trip_and_check_on_converted_weights(tmp_path):
    from parity.core.harness import random_params

    v = ARCH.default_variants()[0]
    params = random_params(ARCH, v, seed=3)
    src = tmp_path / "ckpt"
    checkpoints.save_orbax(params, str(src))
    st = tmp_path / "model.safetensors"
    assert main(["convert", str(src), str(st), "--arch", SPEC]) == 0
    assert checkpoints.read_torch_file(str(st))["conv_in.weight"].shape == (8, 1, 3, 3)  # OIHW, C_in = 1
    back = tmp_path / "back"
    assert main(["convert", str(st), str(back), "--arch", SPEC]) == 0
    a = parity.convert.flatten_tree(params)
    b = parity.convert.flatten_tree(checkpoints.load_params(str(back), ARCH, v.model_cfg))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert main(["--arch", SPEC, "--dtype", "float64", "--checkpoint", str(st), "--checks", "none",
                 "--trained-steps", "0"]) == 0
    assert main(["debug", "--arch", SPEC, "--dtype", "float64", "--checkpoint", str(st),
                 "--out", str(tmp_path / "d")]) == 0
