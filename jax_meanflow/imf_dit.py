"""The improved MeanFlow network (official `imfDiT`), Flax linen, NHWC.

Call: `IMFDiT(config).apply({"params": p}, z, t, h, omega, t_min, t_max, y) -> (u, v)`,
z, u, v [B, H, W, C]; t, h, omega, t_min, t_max [B] floats; y [B] int (num_classes = null).
As in the official code, t is accepted but unused (the network sees only h = t - r).
Conditioning: learned prefix tokens plus embeddings of y, 1 - 1/omega, t_min, t_max, h, in
that order, before the patch tokens; a shared trunk of depth - aux_head_depth blocks, then
the u and v heads (aux_head_depth blocks each); `config.eval=True` is the inference network
(no v heads; v is then v_final_layer of the trunk's output, as official).

Parameter tree = the official one under "net" (`load_official_params` strips "params"/"net"):
    x_embedder/proj/{kernel,bias}
    {h,omega,cfg_t_start,cfg_t_end}_embedder/mlp/layers_{0,2}/_flax_linear/{kernel,bias}
    y_embedder/embedding_table/_flax_embedding/embedding         [num_classes + 1, D]
    {class,omega,t_min,t_max,time}_tokens                        [n, D]
    {shared_blocks,u_heads,v_heads}_{i}/{norm1,norm2}/kernel, attn_scale, mlp_scale,
        attn/{q,k,v,out}_proj/_flax_linear/kernel, attn/{q,k}_norm/kernel, mlp/w{1,2,3}/_flax_linear/kernel
    {u,v}_final_layer/norm/kernel, {u,v}_final_layer/linear/_flax_linear/{kernel,bias}
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jax_meanflow.dit import LabelEmbedder, PatchEmbed, _flat
from jax_meanflow.imf_layers import FinalLayer, TransformerBlock
from jax_meanflow.layers import TimestepEmbedder
from meanflow_common.imf_config import IMFDiTConfig
from meanflow_common.imf_tables import imf_rope_cos_sin
from meanflow_common.keys import check_keys_and_shapes

__all__ = ["IMFDiT", "check_inputs", "init_params", "param_shapes", "make_net_fn", "load_official_params"]

_TOKENS = ("class_tokens", "omega_tokens", "t_min_tokens", "t_max_tokens", "time_tokens")


def check_inputs(cfg, z, t, h, omega, t_min, t_max, y):
    """Shapes, layout and dtypes, with messages naming the problem."""
    name = type(cfg).__name__
    c, s = cfg.in_channels, cfg.input_size
    if jnp.ndim(z) != 4:
        raise ValueError(f"{name}: z must be [B, H, W, C] (NHWC), got shape {jnp.shape(z)}")
    if z.shape[1:] != (s, s, c):
        hint = " (channels on axis 1 look like NCHW; use z.transpose(0, 2, 3, 1))" if z.shape[1] == c else ""
        raise ValueError(f"{name}: z has shape {z.shape}, expected [B, {s}, {s}, {c}] (NHWC){hint}")
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{name}: z must be floating point, got {z.dtype}")
    b = z.shape[0]
    for k, v in (("t", t), ("h", h), ("omega", omega), ("t_min", t_min), ("t_max", t_max), ("y", y)):
        if jnp.shape(v) != (b,):
            raise ValueError(f"{name}: {k} must have shape [B] = ({b},), got {jnp.shape(v)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"{name}: labels y must be integers, got {jnp.result_type(y)}")
    if not isinstance(y, jax.core.Tracer):
        yy = np.asarray(y)
        bad = yy[(yy < 0) | (yy > cfg.num_classes)]
        if bad.size:
            raise ValueError(f"{name}: labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null), got {bad.tolist()}")


class IMFDiT(nn.Module):
    config: IMFDiTConfig

    def _token_shape(self, n):
        return (n, self.config.hidden_size)

    def _embedders(self):
        cfg = self.config
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.hidden_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size)

    def _rope(self):
        cfg = self.config
        return imf_rope_cos_sin(cfg.head_dim, cfg.prefix_tokens + cfg.num_patches)

    def setup(self):
        cfg = self.config
        d = cfg.hidden_size
        self._embedders()
        for emb in ("h_embedder", "omega_embedder", "cfg_t_start_embedder", "cfg_t_end_embedder"):
            setattr(self, emb, TimestepEmbedder(d, cfg.frequency_embedding_size))
        init = nn.initializers.normal(1.0 / np.sqrt(d))
        counts = dict(class_tokens=cfg.num_class_tokens, omega_tokens=cfg.num_cfg_tokens,
                      t_min_tokens=cfg.num_interval_tokens, t_max_tokens=cfg.num_interval_tokens,
                      time_tokens=cfg.num_time_tokens)
        for tok in _TOKENS:
            setattr(self, tok, self.param(tok, init, self._token_shape(counts[tok])))
        blk = dict(hidden_size=d, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio)
        self.shared_blocks = [TransformerBlock(**blk) for _ in range(cfg.shared_depth)]
        self.u_heads = [TransformerBlock(**blk) for _ in range(cfg.aux_head_depth)]
        self.v_heads = [TransformerBlock(**blk) for _ in range(0 if cfg.eval else cfg.aux_head_depth)]
        out = cfg.patch_size**2 * cfg.in_channels
        self.u_final_layer = FinalLayer(out)
        self._v_final(out)

    def _v_final(self, out):
        self.v_final_layer = FinalLayer(out)

    def _sequence(self, z, h, omega, t_min, t_max, y):
        conds = (self.y_embedder(y), self.omega_embedder(1 - 1 / omega), self.cfg_t_start_embedder(t_min),
                 self.cfg_t_end_embedder(t_max), self.h_embedder(h))
        toks = [getattr(self, k) + e[:, None] for k, e in zip(_TOKENS, conds)]
        return jnp.concatenate(toks + [self.x_embedder(z)], axis=1)

    def unpatchify(self, x):
        """[B, N, p * p * C] -> [B, H, W, C]."""
        cfg = self.config
        p, c, g = cfg.patch_size, cfg.in_channels, cfg.input_size // cfg.patch_size
        x = jnp.einsum("nhwpqc->nhpwqc", x.reshape(x.shape[0], g, g, p, p, c))
        return x.reshape(x.shape[0], g * p, g * p, c)

    def _outputs(self, z, t, u, v):
        return u, v

    def __call__(self, z, t, h, omega, t_min, t_max, y):
        return self._outputs(z, t, *self.heads(z, t, h, omega, t_min, t_max, y))

    def heads(self, z, t, h, omega, t_min, t_max, y):
        """The two heads' outputs before the network's own conversion (`_outputs`): iMF's
        velocities (u, v); pMF's clean-image predictions (x_u, x_v), which pMF's loss and
        sampler convert with their t_clip_min. `model.apply(..., method="heads")`."""
        cfg = self.config
        check_inputs(cfg, z, t, h, omega, t_min, t_max, y)
        rope = self._rope()
        seq = self._sequence(z, h, omega, t_min, t_max, y)
        for blk in self.shared_blocks:
            seq = blk(seq, rope)
        u_seq = v_seq = seq
        for blk in self.u_heads:
            u_seq = blk(u_seq, rope)
        for blk in self.v_heads:
            v_seq = blk(v_seq, rope)
        n = cfg.prefix_tokens
        u = self.unpatchify(self.u_final_layer(u_seq[:, n:]))
        v = self.unpatchify(self.v_final_layer(v_seq[:, n:]))
        return u, v


def _dummy(cfg, dtype):
    s, one = cfg.input_size, jnp.ones((1,), dtype)
    return (jnp.zeros((1, s, s, cfg.in_channels), dtype), one * 0.5, one * 0.1, one * 2.0, one * 0.0, one,
            jnp.zeros((1,), jnp.int32))


def init_params(model: IMFDiT, key, dtype=jnp.float32) -> dict:
    """Fresh parameters (official initialisation: zero gates and final layers) as `dtype`."""
    def init(k):
        params = model.init(k, *_dummy(model.config, jnp.float32))["params"]
        return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)

    key = jnp.asarray(key)
    lowered = jax.jit(init).lower(jax.ShapeDtypeStruct(key.shape, key.dtype))
    # An init runs once: XLA's CPU optimiser would take far longer than the unoptimised program.
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=opts)(key)


def param_shapes(model: IMFDiT) -> dict:
    """{"a/b/c": shape} of the model's parameter tree, computing nothing."""
    tree = jax.eval_shape(lambda k: model.init(k, *_dummy(model.config, jnp.float32))["params"], jax.random.PRNGKey(0))
    return {k: tuple(v.shape) for k, v in _flat(tree).items()}


def load_official_params(model: IMFDiT, tree, dtype=None) -> dict:
    """An official checkpoint tree (with or without "params"/"net") checked key by key and
    shape by shape against `model`; returns jnp arrays (cast to `dtype` when given)."""
    while hasattr(tree, "keys") and len(tree) == 1 and next(iter(tree)) in ("params", "net"):
        tree = tree[next(iter(tree))]
    check_keys_and_shapes({k: np.shape(v) for k, v in _flat(tree).items()}, param_shapes(model),
                          f"{type(model).__name__} parameters")
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype=dtype), dict(tree))


def make_net_fn(model: IMFDiT, params):
    """net(z, t, h, omega, t_min, t_max, y) -> (u, v), jitted, inputs checked outside jit."""
    apply = jax.jit(model.apply)

    def net(z, t, h, omega, t_min, t_max, y):
        check_inputs(model.config, z, t, h, omega, t_min, t_max, y)
        return apply({"params": params}, z, t, h, omega, t_min, t_max, y)

    return net
