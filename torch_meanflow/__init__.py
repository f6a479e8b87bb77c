"""MeanFlow in PyTorch: the port of meanflow-parity (twin of `jax_meanflow`).

The curated public API; each name lives in the module given in the comment.
Float64 works end to end: build the model in torch.float64 and pass float64 data.
"""
from torch_meanflow.attention import attention  # attention.py
from torch_meanflow.config import (  # config.py (re-exports meanflow_common.config)
    DIT_PRESETS,
    FLOWER_PRESETS,
    DiTConfig,
    FlowerConfig,
    MeanFlowConfig,
    OptimConfig,
    get_preset,
    override,
)
from torch_meanflow.dit import DiT, init_dit  # dit.py
from torch_meanflow.dit import make_u_fn as dit_u_fn
from torch_meanflow.flower import FlowerCond, FlowerTransformer, init_flower  # flower.py
from torch_meanflow.flower import make_u_fn as flower_u_fn
from torch_meanflow.objective import (  # objective.py
    MeanFlowNoise,
    MeanFlowOutput,
    cond_drop,
    flow_matching_loss,
    guidance_velocity,
    meanflow_loss,
    sample_noise,
    sample_tr,
)
from torch_meanflow.params import count_params, randomize_params  # params.py
from torch_meanflow.policy import FlowerPolicy, LowDimEncoder, ObservationEncoder  # policy.py
from torch_meanflow.solver import generate, sampling_schedule, solver_step  # solver.py
from torch_meanflow.train_state import (  # train_state.py
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
    "FlowerPolicy",
    "LowDimEncoder",
    "ObservationEncoder",
    "generate",
    "sampling_schedule",
    "solver_step",
    "TrainState",
    "create_train_state",
    "make_lr_schedule",
    "make_optimizer",
    "make_train_step",
    "train_step",
]
