"""The pixel MeanFlow network (official `pmfDiT`), Flax linen, NHWC.

Same call and outputs as `jax_meanflow.imf_dit.IMFDiT`; differences, as official:
- a bottleneck patch embedder `x_embedder/proj1` (p x p conv to pca_channels) and
  `x_embedder/proj2` (1 x 1 conv to D);
- prefix tokens [1, n, D], a learned `pos_embed` [1, prefix + patches, D] added to the sequence;
- 2-D RoPE on the patch tokens only (prefix tokens are not rotated);
- label table `y_embedder/embedding_table/embedding` [1, num_classes + 1, D];
- the heads predict the clean image x_hat; the outputs are velocities
  u = (z - x_hat_u) / clip(t, 0.05, 1), v = (z - x_hat_v) / clip(t, 0.05, 1);
- the inference network (`config.eval`) has neither v heads nor `v_final_layer` (x_hat_v = 0).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jax_meanflow.imf_dit import IMFDiT, check_inputs, init_params, load_official_params, make_net_fn, param_shapes
from jax_meanflow.imf_layers import PrefixEmbedding
from meanflow_common.imf_config import PMFDiTConfig
from meanflow_common.imf_tables import pmf_rope_cos_sin

__all__ = ["PMFDiT", "check_inputs", "init_params", "param_shapes", "make_net_fn", "load_official_params"]


class BottleneckPatchEmbed(nn.Module):
    """[B, H, W, C] -> [B, (H/p)^2, D] through pca_channels."""

    patch_size: int
    pca_channels: int
    hidden_size: int

    @nn.compact
    def __call__(self, x):
        p, init = self.patch_size, nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1)
        x = nn.Conv(self.pca_channels, (p, p), strides=(p, p), padding="VALID", kernel_init=init, name="proj1")(x)
        x = nn.Conv(self.hidden_size, (1, 1), padding="VALID", kernel_init=init, name="proj2")(x)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class LabelTable(nn.Module):
    num_classes: int
    hidden_size: int

    def setup(self):
        self.embedding_table = PrefixEmbedding(self.num_classes + 1, self.hidden_size)

    def __call__(self, y):
        return self.embedding_table(y)


class PMFDiT(IMFDiT):
    config: PMFDiTConfig

    def _token_shape(self, n):
        return (1, n, self.config.hidden_size)

    def _embedders(self):
        cfg = self.config
        self.x_embedder = BottleneckPatchEmbed(cfg.patch_size, cfg.pca_channels, cfg.hidden_size)
        self.y_embedder = LabelTable(cfg.num_classes, cfg.hidden_size)
        self.pos_embed = self.param("pos_embed", nn.initializers.normal(0.02),
                                    (1, cfg.prefix_tokens + cfg.num_patches, cfg.hidden_size))

    def _rope(self):
        return pmf_rope_cos_sin(self.config.head_dim, self.config.num_patches)

    def _v_final(self, out):
        if not self.config.eval:
            super()._v_final(out)
        else:
            self.v_final_layer = lambda x: jnp.zeros(x.shape[:2] + (out,), x.dtype)

    def _sequence(self, z, h, omega, t_min, t_max, y):
        return super()._sequence(z, h, omega, t_min, t_max, y) + self.pos_embed

    def _outputs(self, z, t, u, v):
        tc = jnp.clip(t, 0.05, 1.0).astype(z.dtype)[:, None, None, None]
        return (z - u) / tc, (z - v) / tc
