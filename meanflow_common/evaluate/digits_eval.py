"""Evaluation of class-conditional digit generators: classifier accuracy and Fréchet distance.

A generator is any `generate_fn(noise, labels) -> images` with noise float32 [N, 8, 8, 1]
(NHWC, standard normal, drawn here from the evaluation seed so that every backend sees the
same noise) and labels int64 [N]; it returns images [N, 8, 8, 1] NHWC on the data scale
[-1, 1]. The samples are clipped to [-1, 1] before scoring, as writing them as images
would (the fraction that needed clipping is reported).

Metrics:
- accuracy: fraction of samples the fixed classifier assigns to their conditioning class;
- fd: Fréchet distance between the classifier's penultimate features of the samples and of
  the held-out digits; fd_real: the same between the training digits and the held-out
  digits (the floor a perfect generator would reach with this many samples, roughly).
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from meanflow_common.evaluate.classifier import check_images, get_classifier
from meanflow_common.evaluate.frechet import frechet_distance, frechet_from_stats, gaussian_stats

__all__ = ["digit_eval_inputs", "score_digits", "evaluate_digits", "real_reference_fd"]

NUM_CLASSES = 10


def digit_eval_inputs(n_per_class: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noise float32 [10 n, 8, 8, 1], labels int64 [10 n] = 0..9 each repeated n times)."""
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), n_per_class)
    noise = np.random.default_rng([seed, 6]).standard_normal((len(labels), 8, 8, 1)).astype(np.float32)
    return noise, labels


@functools.lru_cache(maxsize=1)
def _held_out_stats():
    from meanflow_common.data import get_dataset

    data = get_dataset("digits")
    clf = get_classifier()
    return gaussian_stats(clf.features(data.test["x"])), clf.features(data.train["x"])


def real_reference_fd() -> float:
    """FD between the training digits and the held-out digits (the real-data floor)."""
    (mu, cov), train_feats = _held_out_stats()
    return frechet_from_stats(*gaussian_stats(train_feats), mu, cov)


def score_digits(samples: np.ndarray, labels: np.ndarray) -> dict:
    """Metrics of generated images [N, 8, 8, 1] (NHWC, data scale) given their classes [N]."""
    x = check_images(samples, "generated samples")
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise ValueError(f"labels must be [N] = ({len(x)},), got {labels.shape}")
    out_of_range = float(np.mean(np.abs(x) > 1.0))
    x = np.clip(x, -1.0, 1.0)
    clf = get_classifier()
    pred = clf.predict(x)
    correct = pred == labels
    per_class = [float(correct[labels == c].mean()) if np.any(labels == c) else float("nan")
                 for c in range(NUM_CLASSES)]
    (mu, cov), _ = _held_out_stats()
    fd = frechet_from_stats(*gaussian_stats(clf.features(x)), mu, cov)
    return {
        "n": int(len(x)),
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "fd": fd,
        "fd_real": real_reference_fd(),
        "out_of_range": out_of_range,
        "classifier_held_out_accuracy": clf.held_out_accuracy,
    }


def evaluate_digits(generate_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n_per_class: int = 100,
                    seed: int = 0, batch_size: int = 500) -> dict:
    """Generate n_per_class samples per class with `generate_fn` (in batches) and score them."""
    noise, labels = digit_eval_inputs(n_per_class, seed)
    chunks = []
    for i in range(0, len(labels), batch_size):
        out = np.asarray(generate_fn(noise[i:i + batch_size], labels[i:i + batch_size]))
        if out.shape != noise[i:i + batch_size].shape:
            raise ValueError(f"generate_fn returned shape {out.shape}, expected {noise[i:i + batch_size].shape} (NHWC)")
        chunks.append(out)
    return score_digits(np.concatenate(chunks), labels)
