"""A user's one-channel image network pair with GroupNorm and FiLM (8x8, MNIST-like), written
in Flax (`flax_net.py`) and PyTorch (`torch_net.py`), with its table and `Arch` (`arch.py`).

Its networks take no `train` keyword (the Arch's u_fn adapters drop it), and one channel
makes the NCHW input both contiguous and channels_last to torch: the shapes that the harness
must hand over with standard strides. tests/test_groupnorm_arch.py runs it through the check,
the debugger and the converter.

    python -m parity --arch examples.groupnorm_film:ARCH
"""
from examples.groupnorm_film.arch import ARCH, PRESETS, GroupNormFilmConfig

__all__ = ["ARCH", "PRESETS", "GroupNormFilmConfig"]
