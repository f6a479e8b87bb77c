"""Input checks shared by both backends (shapes and dtypes only, no framework import).

Each backend passes shapes (tuples) and dtypes (anything whose str() names the dtype), so
the two twins raise the same error for the same bad input.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence


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
