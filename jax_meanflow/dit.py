"""The DiT image network of the official JAX MeanFlow code, Flax linen, NHWC.

The parameter tree is the official checkpoint tree (without the outer "net" of the
MeanFlow wrapper), e.g.

    x_embedder/proj/{kernel,bias}                      conv, kernel HWIO [p, p, C, D]
    t_embedder/mlp/layers_{0,2}/_flax_linear/*         (same for h_embedder)
    y_embedder/embedding_table/_flax_embedding/embedding   [num_classes + 1, D]
    blocks/layers_{i}/attn/{qkv,proj}/_flax_linear/*
    blocks/layers_{i}/mlp/{fc1,fc2}/_flax_linear/*
    blocks/layers_{i}/adaLN_modulation/layers_1/_flax_linear/*
    final_layer/{linear,adaLN_modulation/layers_1}/_flax_linear/*

The network has no dropout: the official model is built with class_dropout_prob=0 and
class dropout lives in the objective. Labels equal to num_classes select the null class.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jax_meanflow.attention import attention
from jax_meanflow.layers import LayerNorm, Linear, Mlp, TimestepEmbedder, modulate
from meanflow_common.config import DiTConfig
from meanflow_common.keys import check_keys_and_shapes
from meanflow_common.tables import sincos_2d_pos_embed

__all__ = ["DiT", "init_dit", "param_shapes", "make_u_fn", "load_official_params", "check_params"]


class PatchEmbed(nn.Module):
    """[B, H, W, C] -> [B, (H/p) * (W/p), D] by a conv with kernel = stride = p."""

    patch_size: int
    hidden_size: int

    @nn.compact
    def __call__(self, x):
        p = self.patch_size
        x = nn.Conv(
            self.hidden_size,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            use_bias=True,
            kernel_init=nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
            bias_init=nn.initializers.zeros,
            name="proj",
        )(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class Embedding(nn.Module):
    """Lookup table wrapped as in the official code (`_flax_embedding/embedding`), normal(0.02)."""

    num_embeddings: int
    features: int

    @nn.compact
    def __call__(self, ids):
        table = nn.Embed(
            self.num_embeddings, self.features, embedding_init=nn.initializers.normal(0.02), name="_flax_embedding"
        )
        return table(ids)


class LabelEmbedder(nn.Module):
    num_classes: int
    hidden_size: int

    def setup(self):
        self.embedding_table = Embedding(self.num_classes + 1, self.hidden_size)  # last row: null class

    def __call__(self, labels):
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (timm layout: qkv reshaped to [B, N, 3, H, d])."""

    dim: int
    num_heads: int

    def setup(self):
        self.qkv = Linear(3 * self.dim)
        self.proj = Linear(self.dim)

    def __call__(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).transpose(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])  # [B, H, N, d_head]
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, d))


class DiTBlock(nn.Module):
    """adaLN-Zero block: x [B, N, D], c [B, D] -> [B, N, D]."""

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0

    def setup(self):
        d = self.hidden_size
        self.norm1 = LayerNorm(eps=1e-6)
        self.attn = Attention(d, self.num_heads)
        self.norm2 = LayerNorm(eps=1e-6)
        self.mlp = Mlp(int(d * self.mlp_ratio), approximate="tanh")
        zeros = nn.initializers.zeros
        self.adaLN_modulation = nn.Sequential([nn.silu, Linear(6 * d, kernel_init=zeros)])

    def __call__(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(self.adaLN_modulation(c), 6, axis=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """x [B, N, D], c [B, D] -> [B, N, p * p * C]."""

    hidden_size: int
    patch_size: int
    out_channels: int

    def setup(self):
        zeros = nn.initializers.zeros
        self.norm_final = LayerNorm(eps=1e-6)
        self.linear = Linear(self.patch_size**2 * self.out_channels, kernel_init=zeros)
        self.adaLN_modulation = nn.Sequential([nn.silu, Linear(2 * self.hidden_size, kernel_init=zeros)])

    def __call__(self, x, c):
        shift, scale = jnp.split(self.adaLN_modulation(c), 2, axis=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _check_inputs(cfg: DiTConfig, x, t, h, y):
    """Shape/layout/label checks with messages naming the problem (shapes are static under jit)."""
    if x.ndim != 4:
        raise ValueError(f"DiT expects x of shape [B, H, W, C] (NHWC), got shape {x.shape}")
    c = cfg.in_channels
    if x.shape[-1] != c:
        if x.shape[1] == c:
            raise ValueError(
                f"x has shape {x.shape}: channels on axis 1 look like NCHW, but the JAX DiT takes NHWC "
                f"[B, {cfg.input_size}, {cfg.input_size}, {c}]; transpose with x.transpose(0, 2, 3, 1)"
            )
        raise ValueError(f"x has {x.shape[-1]} channels on the last axis (NHWC), expected in_channels={c}")
    if x.shape[1:3] != (cfg.input_size, cfg.input_size):
        raise ValueError(f"x spatial size {x.shape[1:3]} != input_size {cfg.input_size} (x shape {x.shape})")
    b = x.shape[0]
    for name, v in (("t", t), ("h", h), ("y", y)):
        if jnp.shape(v) != (b,):
            raise ValueError(f"{name} must have shape [B] = ({b},), got {jnp.shape(v)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"labels y must be integers, got dtype {jnp.result_type(y)}")
    if not isinstance(y, jax.core.Tracer):  # only concrete labels can be checked
        yy = np.asarray(y)
        bad = yy[(yy < 0) | (yy > cfg.num_classes)]
        if bad.size:
            raise ValueError(
                f"labels must lie in [0, {cfg.num_classes}] ({cfg.num_classes} = null class), got {bad.tolist()}"
            )


class DiT(nn.Module):
    """MeanFlow DiT: u(x [B, H, W, C], t [B], h [B], y [B] int) -> [B, H, W, C]."""

    config: DiTConfig

    def setup(self):
        cfg = self.config
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.patch_size, d)
        self.t_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.h_embedder = TimestepEmbedder(d, cfg.frequency_embedding_size)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d)
        self.blocks = nn.Sequential([DiTBlock(d, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.in_channels)

    def unpatchify(self, x):
        """[B, N, p * p * C] -> [B, H, W, C]."""
        cfg = self.config
        p, c, g = cfg.patch_size, cfg.in_channels, cfg.input_size // cfg.patch_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = jnp.einsum("nhwpqc->nhpwqc", x)
        return x.reshape(x.shape[0], g * p, g * p, c)

    def __call__(self, x, t, h, y, train: bool = False):
        """`train` is accepted for the u_fn interface; the network has no dropout."""
        cfg = self.config
        _check_inputs(cfg, x, t, h, y)
        tokens = self.x_embedder(x)
        grid = cfg.input_size // cfg.patch_size
        tokens = tokens + jnp.asarray(sincos_2d_pos_embed(cfg.hidden_size, grid).astype(tokens.dtype))
        c = self.t_embedder(t) + self.h_embedder(h) + self.y_embedder(y)
        for block in self.blocks.layers:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))


def _dummy_inputs(cfg: DiTConfig, dtype):
    s = cfg.input_size
    return (
        jnp.zeros((1, s, s, cfg.in_channels), dtype),
        jnp.zeros((1,), dtype),
        jnp.zeros((1,), dtype),
        jnp.zeros((1,), jnp.int32),
    )


def _check_dtype(dtype):
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("float64 parameters need jax.config.update('jax_enable_x64', True)")


def _init_fn(config: DiTConfig, dtype_name: str):
    dtype = jnp.dtype(dtype_name)

    def init(key):
        params = DiT(config).init(key, *_dummy_inputs(config, dtype))["params"]
        return jax.tree_util.tree_map(lambda p: p.astype(dtype), params)

    return init


@functools.lru_cache(maxsize=16)
def _compiled_init(config: DiTConfig, dtype_name: str, key_aval: jax.ShapeDtypeStruct, backend: str):
    lowered = jax.jit(_init_fn(config, dtype_name)).lower(key_aval)
    # An init runs once: XLA's CPU optimiser would spend ~10x longer on the unrolled
    # random-number code than the unoptimised program takes to run.
    options = {"xla_backend_optimization_level": 0} if backend == "cpu" else None
    return lowered.compile(compiler_options=options)


def init_dit(config: DiTConfig, key, dtype=jnp.float32) -> dict:
    """Fresh parameters (the reference initialisation) cast to `dtype`; returns the tree
    without the "params" collection key."""
    _check_dtype(dtype)
    key = jnp.asarray(key)
    aval = jax.ShapeDtypeStruct(key.shape, key.dtype)
    return _compiled_init(config, jnp.dtype(dtype).name, aval, jax.default_backend())(key)


def param_shapes(config: DiTConfig, dtype=jnp.float32) -> dict:
    """The parameter tree of `config` as jax.ShapeDtypeStruct leaves (nothing computed)."""
    _check_dtype(dtype)
    shapes = jax.eval_shape(_init_fn(config, jnp.dtype(dtype).name), jax.random.PRNGKey(0))
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), shapes)


@functools.lru_cache(maxsize=16)
def _jitted_apply(cls, config: DiTConfig):
    return jax.jit(cls(config).apply, static_argnames="train")  # one compile per shape, not per u_fn


def make_u_fn(model: DiT, params):
    """u_fn(z [B, H, W, C], t [B], h [B], y [B], train=False) -> u [B, H, W, C].

    The forward is jitted (params passed as an argument, not baked in as constants); the
    inputs are checked first, outside jit, so concrete labels are range-checked.
    """
    apply = _jitted_apply(type(model), model.config)

    def u_fn(z, t, h, y, train=False):
        _check_inputs(model.config, z, t, h, y)
        return apply({"params": params}, z, t, h, y, train=train)

    return u_fn


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flat(v, path))
        else:
            out[path] = v
    return out


@functools.lru_cache(maxsize=16)
def _param_shapes(config: DiTConfig) -> dict:
    return _flat(jax.eval_shape(_init_fn(config, "float32"), jax.random.PRNGKey(0)))


def check_params(params, config: DiTConfig):
    """Compare every key and shape of `params` with a fresh init's; raise naming the key."""
    want = {k: v.shape for k, v in _param_shapes(config).items()}
    check_keys_and_shapes({k: np.shape(v) for k, v in _flat(params).items()}, want, "DiT parameters")


def load_official_params(tree, config: DiTConfig, dtype=None) -> dict:
    """Parameters from an official checkpoint tree, with or without the outer "net" and
    "params" keys; every key and shape is validated against a fresh init.

    Returns the plain tree for `make_u_fn`, as jnp arrays (cast to `dtype` when given).
    """
    while hasattr(tree, "keys") and len(tree) == 1 and next(iter(tree)) in ("params", "net"):
        tree = tree[next(iter(tree))]
    check_params(tree, config)
    if dtype is not None:
        _check_dtype(dtype)

    def convert(node):
        if hasattr(node, "items"):
            return {k: convert(v) for k, v in node.items()}
        return jnp.asarray(node, dtype=dtype)

    return convert(tree)
