"""The shared configs' defaults against the references' (configs/default.py of the JAX
MeanFlow code, FLOWER's conf/model/flower.yaml): both backends read these, so a wrong
default would be shared and invisible to parity."""
import dataclasses
import os

from meanflow_common.config import DIT_PRESETS, FLOWER_PRESETS, DiTConfig, FlowerConfig, MeanFlowConfig, OptimConfig

REFERENCE_MEANFLOW = dict(
    noise_dist="logit_normal", P_mean=-0.4, P_std=1.0, data_proportion=0.75, guidance_eq="cfg",
    omega=1.0, kappa=0.5, t_start=0.0, t_end=1.0, class_dropout_prob=0.1, norm_p=1.0, norm_eps=0.01,
    num_steps=1,
    # py-meanflow's options, off: the JAX semantics
    clip_h=True, rt_mask="first", tr_sampler="v0", tangent="guided", jvp_path="jvp",
    P_mean_t=None, P_std_t=None, P_mean_r=None, P_std_r=None,
)
REFERENCE_OPTIM = dict(lr=1e-4, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, grad_clip=0.0, warmup_steps=0,
                       ema_decay=0.9999)
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "M": (16, 1024, 16), "L": (24, 1024, 16), "XL": (28, 1152, 16)}


def test_meanflow_and_optim_defaults_are_the_references():
    assert dataclasses.asdict(MeanFlowConfig()) == REFERENCE_MEANFLOW
    assert dataclasses.asdict(OptimConfig()) == REFERENCE_OPTIM
    cfg = MeanFlowConfig()
    assert cfg.time_dist_params("t") == cfg.time_dist_params("r") == (-0.4, 1.0)


def test_dit_default_and_presets():
    d = DiTConfig()
    assert (d.input_size, d.patch_size, d.in_channels, d.hidden_size, d.depth, d.num_heads) == (32, 4, 4, 768, 12, 12)
    assert (d.mlp_ratio, d.num_classes, d.frequency_embedding_size) == (4.0, 1000, 256)
    for size, (depth, width, heads) in DIT_SIZES.items():
        for p in (2, 4, 8):
            c = DIT_PRESETS[f"DiT-{size}/{p}"]
            assert (c.depth, c.hidden_size, c.num_heads, c.patch_size) == (depth, width, heads, p)


def test_flower_default_is_flower_yaml():
    f = FlowerConfig()
    assert FLOWER_PRESETS["default"] == f
    assert (f.dit_dim, f.n_heads, f.n_layers, f.act_window_size) == (1024, 16, 18, 10)
    assert (f.attn_pdrop, f.resid_pdrop, f.mlp_pdrop) == (0.1, 0.1, 0.1)
    assert (f.position_mode, f.rope_theta, f.time_scale, f.lora_dim) == ("rope", 32.0, 1000.0, 256)


# the assignments over the `digits` preset that docs/RESULTS.md's 1-NFE runs were trained with
DIGITS_1NFE_SETS = ["steps=1500", "log_every=50", "ckpt_every=500", "optim.ema_decay=0.99", "optim.lr=4e-3",
                    "mf.guidance_eq=", "mf.class_dropout_prob=0", "mf.data_proportion=0.5"]


def test_the_digits_1nfe_preset_is_the_measured_recipe():
    """The preset is the `digits` preset with exactly the documented assignments (apart from
    out_dir), and its target has no guidance: v_g = v, no unconditional forward."""
    from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

    preset = TRAIN_PRESETS["digits_1nfe"]
    measured = apply_assignments(TRAIN_PRESETS["digits"], DIGITS_1NFE_SETS + [f"out_dir={preset.out_dir}"])
    assert preset == measured
    assert preset.mf.guidance_eq == "" and preset.mf.class_dropout_prob == 0.0
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "RESULTS.md")) as f:
        doc = f.read()
    assert " ".join(DIGITS_1NFE_SETS) in doc, "docs/RESULTS.md no longer lists the recipe's assignments"
