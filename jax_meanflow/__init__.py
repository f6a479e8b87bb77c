"""MeanFlow in JAX / Flax (linen): the reference backend of meanflow-parity.

The curated public API; each name lives in the module given in the comment.
Float64 works end to end after `jax.config.update("jax_enable_x64", True)`.
"""
from jax_meanflow.attention import attention  # attention.py
from jax_meanflow.config import (  # config.py (re-exports meanflow_common.config)
    DIT_PRESETS,
    FLOWER_PRESETS,
    DiTConfig,
    FlowerConfig,
    MeanFlowConfig,
    OptimConfig,
    get_preset,
    override,
)
from jax_meanflow.dit import DiT, init_dit, load_official_params  # dit.py
from jax_meanflow.dit import make_u_fn as dit_u_fn
from jax_meanflow.flower import FlowerCond, FlowerTransformer, init_flower  # flower.py
from jax_meanflow.flower import make_u_fn as flower_u_fn
from jax_meanflow.objective import (  # objective.py
    MeanFlowNoise,
    MeanFlowOutput,
    cond_drop,
    flow_matching_loss,
    guidance_velocity,
    meanflow_loss,
    sample_noise,
    sample_tr,
)
from jax_meanflow.params import count_params, randomize_params  # params.py
from jax_meanflow.solver import generate, make_generate, sampling_schedule, solver_step  # solver.py
from jax_meanflow.train_state import (  # train_state.py
    TrainState,
    create_train_state,
    make_lr_schedule,
    make_optimizer,
    make_train_step,
    train_step,
)

__all__ = [
    "attention",
    "DIT_PRESETS",
    "FLOWER_PRESETS",
    "DiTConfig",
    "FlowerConfig",
    "MeanFlowConfig",
    "OptimConfig",
    "get_preset",
    "override",
    "DiT",
    "init_dit",
    "load_official_params",
    "dit_u_fn",
    "FlowerCond",
    "FlowerTransformer",
    "init_flower",
    "flower_u_fn",
    "MeanFlowNoise",
    "MeanFlowOutput",
    "cond_drop",
    "flow_matching_loss",
    "guidance_velocity",
    "meanflow_loss",
    "sample_noise",
    "sample_tr",
    "count_params",
    "randomize_params",
    "generate",
    "make_generate",
    "sampling_schedule",
    "solver_step",
    "TrainState",
    "create_train_state",
    "make_lr_schedule",
    "make_optimizer",
    "make_train_step",
    "train_step",
]
