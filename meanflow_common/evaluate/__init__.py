"""Evaluation shared by both backends (NumPy + scikit-learn): the fixed digit classifier,
the Fréchet distance, k-NN precision / recall, digit-generator scores, copying and novelty
against the training digits (nearest-neighbour distances, the data-copying test), closed-loop reach
rollouts and their mode / path metrics, and the anchors (trivial baselines, the expert).

Backends plug in through plain callables on NumPy arrays (`generate_fn(noise, labels)`,
`policy_fn(obs, noise)`); `python -m torch_meanflow.evaluate` / `python -m
jax_meanflow.evaluate` build them from a run's checkpoint.
"""
from meanflow_common.evaluate.anchors import anchor_records, finish_records
from meanflow_common.evaluate.baselines import DIGIT_BASELINES
from meanflow_common.evaluate.classifier import DigitClassifier, get_classifier
from meanflow_common.evaluate.copying import CopyTest, distinct_count, near_copy_radius, nearest_distances
from meanflow_common.evaluate.digits_eval import (
    copying_metrics,
    digit_eval_inputs,
    diversity_ratio,
    evaluate_digits,
    real_reference_fd,
    score_digits,
    train_distances,
    within_class_spread,
)
from meanflow_common.evaluate.expert_policy import ExpertPolicy
from meanflow_common.evaluate.frechet import frechet_distance, frechet_from_stats, gaussian_stats
from meanflow_common.evaluate.knn import knn_precision_recall, knn_radii
from meanflow_common.evaluate.reach_metrics import mode_coverage, mode_entropy, path_stats, score_policy
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
    "rollout", "rollout_metrics", "chunk_sides", "first_chunk_modes", "knn_precision_recall", "knn_radii",
    "diversity_ratio", "within_class_spread", "mode_coverage", "mode_entropy", "path_stats", "score_policy",
    "ExpertPolicy", "DIGIT_BASELINES", "anchor_records", "finish_records", "CopyTest", "copying_metrics",
    "distinct_count", "near_copy_radius", "nearest_distances", "train_distances",
]
