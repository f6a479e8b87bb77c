"""Framework-free pieces shared by `jax_meanflow` and `torch_meanflow`: configs and constant tables."""
from meanflow_common.config import (
    DIT_PRESETS,
    DiTConfig,
    MeanFlowConfig,
    OptimConfig,
    get_preset,
    override,
)

__all__ = ["DIT_PRESETS", "DiTConfig", "MeanFlowConfig", "OptimConfig", "get_preset", "override"]
