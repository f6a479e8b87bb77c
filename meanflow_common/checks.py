"""Input checks shared by both backends (no framework import).

Each backend passes shapes (tuples), dtypes (anything whose str() names the dtype) or NumPy
copies of small host-side values (times, labels), so the two twins raise the same error for
the same bad input.
"""
from __future__ import annotations

import errno
import os
import shutil
from typing import Any, Optional, Sequence

import numpy as np


def check_flower_inputs(cfg, z_shape: Sequence[int], t_shape, h_shape, tokens_shape, freq_shape,
                        proprio_shape: Optional[Sequence[int]] = None):
    """z [B, T, A], t/h [B], tokens [B, S, cond_dim], frequency_embeds [B, dit_dim], proprio [B, P]."""
    z_shape = tuple(z_shape)
    if len(z_shape) != 3:
        raise ValueError(f"z must be [B, T, A] (batch, window, action), got shape {z_shape}")
    b, n, a = z_shape
    if a != cfg.action_dim:
        raise ValueError(f"action dim {a} of z {z_shape} != config.action_dim {cfg.action_dim}")
    if n != cfg.act_window_size:
        raise ValueError(f"window length {n} of z != config.act_window_size {cfg.act_window_size}")
    for name, shape in (("t", t_shape), ("h", h_shape)):
        if tuple(shape) != (b,):
            raise ValueError(f"{name} must have shape [B] = ({b},), got {tuple(shape)}")
    tok = tuple(tokens_shape)
    if len(tok) != 3 or tok[0] != b:
        raise ValueError(f"cond.tokens must be [B={b}, S, cond_dim], got {tok}")
    if tok[-1] != cfg.cond_dim:
        raise ValueError(f"token feature dim {tok[-1]} != config.cond_dim {cfg.cond_dim}")
    if tuple(freq_shape) != (b, cfg.dit_dim):
        raise ValueError(
            f"cond.frequency_embeds must be [B, dit_dim] = ({b}, {cfg.dit_dim}), got {tuple(freq_shape)}"
        )
    if proprio_shape is not None:
        if not cfg.use_proprio:
            raise ValueError("cond.proprio given but config.use_proprio is False")
        if tuple(proprio_shape) != (b, cfg.proprio_dim):
            raise ValueError(
                f"cond.proprio must be [B, proprio_dim] = ({b}, {cfg.proprio_dim}), got {tuple(proprio_shape)}"
            )


def check_same_dtype(named: Sequence[tuple[str, Any]], expected: Any, what: str):
    """Every (name, dtype) must equal `expected` (the dtype of `what`)."""
    for name, dtype in named:
        if dtype != expected:
            raise ValueError(f"{name} has dtype {dtype}, {what} {expected}")


# ----------------------------------------------------------------------------------
# Values, checked on the host (NumPy) before any framework call
# ----------------------------------------------------------------------------------


def check_times(t: np.ndarray, r: np.ndarray) -> None:
    """MeanFlow's times: finite, 0 <= r <= t <= 1, t and r [B] (NumPy, any float dtype).

    Written with positive comparisons and an explicit finiteness test: every comparison
    with NaN is false, so a check of the form `t < r` lets NaN through.
    """
    t, r = np.asarray(t, np.float64), np.asarray(r, np.float64)
    for name, a in (("t", t), ("r", r)):
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            raise ValueError(f"noise.{name} is not finite (NaN or inf) at indices {bad[:10].tolist()}: "
                             f"{a.reshape(-1)[bad[:3]].tolist()}")
    bad = np.flatnonzero(~(r <= t))
    if bad.size:
        raise ValueError(f"t < r at indices {bad[:10].tolist()}: MeanFlow needs 0 <= r <= t <= 1")
    if not (np.all(r >= 0) and np.all(t <= 1)):
        raise ValueError(f"times t and r must lie in [0, 1], got t in [{t.min()}, {t.max()}], "
                         f"r in [{r.min()}, {r.max()}]")


def check_schedule(schedule: np.ndarray) -> None:
    """A sampling schedule: 1-D, at least 2 finite times, non-increasing, within [0, 1]."""
    s = np.asarray(schedule, np.float64)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"schedule must be 1-D with at least 2 times, got shape {s.shape}")
    if not (np.all(np.isfinite(s)) and np.all(s[1:] <= s[:-1]) and np.all(s >= 0) and np.all(s <= 1)):
        raise ValueError(f"schedule must decrease within [0, 1], got {s.tolist()}")


def check_num_steps(num_steps: Any) -> int:
    """A number of sampling steps: an int >= 1 (bool, float and 0 refused)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    return int(num_steps)


def check_labels(y: Any, num_classes: int, allow_null: bool = False) -> np.ndarray:
    """Class labels for sampling: integer [B] in [0, num_classes) (num_classes, the null class,
    only with `allow_null`). Float labels are refused rather than truncated (3.7 is no class)."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] < 1:
        raise ValueError(f"labels must be [B] with B >= 1, got shape {y.shape}")
    top = num_classes + 1 if allow_null else num_classes
    bad = np.flatnonzero((y < 0) | (y >= top))
    if bad.size:
        null = f"; {num_classes} is the null class, pass allow_null=True to sample it" if not allow_null else ""
        raise ValueError(f"labels must lie in [0, {top}), got {y[bad[:5]].tolist()} at indices "
                         f"{bad[:5].tolist()}{null}")
    return y


def check_float_arrays(named: Any, source: str) -> None:
    """Every (name, array) of a weight file or tree must be floating point: an integer or bool
    array is not a set of weights (an all-zero int32 file would convert and compare as u = 0)."""
    items = named.items() if hasattr(named, "items") else named
    for name, a in items:
        dtype = getattr(a, "dtype", None)
        dtype = np.asarray(a).dtype if dtype is None else dtype
        if not str(dtype).replace("torch.", "").startswith(("float", "bfloat")):  # NumPy, ml_dtypes, torch
            raise TypeError(f"{source}: parameter {name!r} has dtype {dtype}, not a floating point type")


def nonfinite_arrays(named: Any) -> list[str]:
    """"name (N nan/inf of M)" for each (name, array) holding a NaN or an infinity."""
    out = []
    items = named.items() if hasattr(named, "items") else named
    for name, a in items:
        a = np.asarray(a)
        bad = ~np.isfinite(a)
        if bad.any():
            kinds = "/".join(k for k, m in (("nan", np.isnan(a)), ("inf", np.isinf(a))) if m.any())
            out.append(f"{name} ({int(bad.sum())} {kinds} of {a.size})")
    return out


def check_finite_arrays(named: Any, source: str, fix: str = "") -> None:
    """Every (name, array) of a weight file or tree must be finite: NaN or inf weights make
    both sides non-finite, which no comparison can judge (and the trainers never write them).
    ValueError naming `source`, the parameters and `fix` (what the caller can do)."""
    bad = nonfinite_arrays(named)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{source}: non-finite weights in {len(bad)} parameter(s): {', '.join(bad[:5])}{more}"
                         f"{'; ' + fix if fix else ''}")


class UnreadableCheckpointError(ValueError):
    """A checkpoint file or folder exists but cannot be read (truncated, garbage, empty, or
    missing the files its library reads)."""


def unreadable_checkpoint(path: str, err: BaseException) -> UnreadableCheckpointError:
    """The error for a checkpoint file a library could not parse (truncated, garbage, empty):
    it names the file and says so, with the library's first line as the detail."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        detail = "the file is empty"
    else:
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]
        detail = f"{type(err).__name__}: {first}"
    return UnreadableCheckpointError(f"{path} is not a readable checkpoint ({detail}); it may be truncated or "
                                     "corrupt")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous
    checkpoints are intact and no partial file is left."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno N]" prefix
        return str(self.strerror) if self.strerror else super().__str__()


def _free_bytes(path: str) -> int | None:
    head = os.path.abspath(path)
    while head and not os.path.exists(head):
        head = os.path.dirname(head)
    try:
        return shutil.disk_usage(head).free
    except OSError:
        return None


def checkpoint_write_error(path: str, err: BaseException) -> CheckpointWriteError:
    """The error for a failed checkpoint write: the file and the cause, in words.

    Libraries report a full disk in their own terms (torch: `[enforce fail at
    inline_container.cc] unexpected pos`, tensorstore: a status string), so the cause is
    taken from the first OSError in the exception's chain, else from the message, else
    from the free space left on the file's device.
    """
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    code = next((e.errno for e in chain if isinstance(e, OSError) and e.errno), None)
    text = " ".join(str(e) for e in chain).lower()
    free = _free_bytes(path)
    if code == errno.ENOSPC or "no space left" in text or (free is not None and free < 1 << 20):
        code, cause = errno.ENOSPC, "no space left on device"
    elif code is not None:
        cause = os.strerror(code).lower()
    else:
        cause = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
    return CheckpointWriteError(code or errno.EIO, f"{cause} while writing the checkpoint {path}; the previous "
                                                   "checkpoints are kept and no partial file is left")


def check_free_space(path: str, nbytes: int) -> None:
    """CheckpointWriteError(ENOSPC) before a checkpoint of about `nbytes` is written to
    `path` when the file system has less room: a write that fails half-way leaves the
    library's own noise (orbax: tracebacks from its background threads) where one sentence
    will do. The estimate adds 5% and 64 KiB for the file formats' own bytes."""
    need = int(nbytes * 1.05) + (64 << 10)
    free = _free_bytes(path)
    if free is not None and free < need:
        raise CheckpointWriteError(errno.ENOSPC, f"no space left on device for the checkpoint {path}: it needs about "
                                                 f"{_mb(need)}, {_mb(free)} free; the previous checkpoints are kept "
                                                 "(free some space, or set a smaller keep_last)")


def _mb(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MB"
