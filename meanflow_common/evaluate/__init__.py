"""Evaluation shared by both backends (NumPy + scikit-learn): the fixed digit classifier,
the Fréchet distance, digit-generator scores, and closed-loop reach rollouts.

Backends plug in through plain callables on NumPy arrays (`generate_fn(noise, labels)`,
`policy_fn(obs, noise)`); `python -m torch_meanflow.evaluate` / `python -m
jax_meanflow.evaluate` build them from a run's checkpoint.
"""
from meanflow_common.evaluate.classifier import DigitClassifier, get_classifier
from meanflow_common.evaluate.digits_eval import digit_eval_inputs, evaluate_digits, real_reference_fd, score_digits
from meanflow_common.evaluate.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from meanflow_common.evaluate.rollout import (
    RolloutResult,
    chunk_sides,
    first_chunk_modes,
    rollout,
    rollout_metrics,
)

__all__ = [
    "DigitClassifier", "get_classifier", "digit_eval_inputs", "evaluate_digits", "real_reference_fd",
    "score_digits", "frechet_distance", "frechet_from_stats", "gaussian_stats", "RolloutResult",
    "rollout", "rollout_metrics", "chunk_sides", "first_chunk_modes",
]
