"""Evaluation of class-conditional digit generators: accuracy, Fréchet distance, k-NN
precision / recall and within-class diversity.

A generator is any `generate_fn(noise, labels) -> images` with noise float32 [N, 8, 8, 1]
(NHWC, standard normal, drawn here from the evaluation seed so that every backend sees the
same noise) and labels int64 [N]; it returns images [N, 8, 8, 1] NHWC on the data scale
[-1, 1]. The samples are clipped to [-1, 1] before scoring, as writing them as images
would (the fraction that needed clipping is reported).

Metrics:
- accuracy: fraction of samples the fixed classifier assigns to their conditioning class;
- fd: Fréchet distance between the classifier's penultimate features of the samples and of
  the held-out digits; fd_real: the same between the training digits and the held-out
  digits (the floor a perfect generator would reach with this many samples, roughly);
- precision, recall: k-NN precision and recall (k = 3, Kynkäänniemi et al. 2019) of the
  same features against the held-out digits (`meanflow_common.evaluate.knn`); the record
  names k and the reference set (`pr_k`, `pr_reference`);
- diversity_ratio: the within-class feature spread of the samples over that of the
  held-out digits, averaged over the classes (spread of a class = the root-mean-square
  distance of its features to their class mean; 0 for one repeated image per class, about
  1 for real digits);
- copying and novelty against the TRAINING digits (`meanflow_common.evaluate.copying`):
  nn_train_px_median / nn_train_feat_median, the median distance of a sample to its nearest
  training digit in pixels (64 values on [-1, 1]) and in classifier features, beside the
  same medians of the held-out digits (nn_train_px_held_out, nn_train_feat_held_out: the
  level of a fresh real digit); exact_copy_fraction (distance <= 1e-6) and
  near_copy_fraction (distance below near_copy_radius, the smallest distance between two
  training digits; exact copies included); distinct, the number of different samples;
  copy_z, the aggregate Z_U of the data-copying test of Meehan et al. (2020) in pixel space
  (copy_z_feat: the same in feature space, copy_cells: the cells that entered copy_z) and
  copying = copy_z < copy_threshold (-3), None when too few samples fall in the cells to test. Null: the samples are as far from the training
  digits as held-out digits are; a strongly negative Z_U rejects it.

Accuracy saturates (a repeated class-mean image scores 1.0) and FD mixes fidelity with
diversity; recall and the diversity ratio are what separate a generator from the trivial
baselines of `meanflow_common.evaluate.baselines`. None of them sees copying (they compare
with the held-out digits only): a copy of the training set scores as well as real data; the
copying figures are what tell it apart.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from meanflow_common.evaluate.classifier import check_images, get_classifier
from meanflow_common.evaluate.copying import EXACT_TOL, CopyTest, distinct_count, near_copy_radius, nearest_distances
from meanflow_common.evaluate.frechet import frechet_from_stats, gaussian_stats
from meanflow_common.evaluate.knn import DEFAULT_K, knn_precision_recall

__all__ = ["digit_eval_inputs", "score_digits", "evaluate_digits", "real_reference_fd", "within_class_spread",
           "diversity_ratio", "copying_metrics", "train_distances"]

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
    from meanflow_common.data import digits_dataset

    data = digits_dataset()
    clf = get_classifier()
    test_feats = clf.features(data.test["x"])
    return gaussian_stats(test_feats), clf.features(data.train["x"]), test_feats, data.test["y"]


@functools.lru_cache(maxsize=1)
def _copy_reference():
    """The fixed training-set side of the copying figures: (train pixels [M, 64], train
    features [M, 64], near-copy radius, held-out px / feature medians, pixel and feature
    CopyTest)."""
    from meanflow_common.data import digits_dataset

    data = digits_dataset()
    _, train_feats, test_feats, _ = _held_out_stats()
    train_px = data.train["x"].reshape(len(data.train["x"]), -1).astype(np.float64)
    test_px = data.test["x"].reshape(len(data.test["x"]), -1).astype(np.float64)
    return (train_px, train_feats, near_copy_radius(train_px),
            float(np.median(nearest_distances(test_px, train_px)[0])),
            float(np.median(nearest_distances(test_feats, train_feats)[0])),
            CopyTest.fit(train_px, test_px), CopyTest.fit(train_feats, test_feats))


def train_distances(x: np.ndarray, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the distance to the nearest training digit: (in pixels float64 [N], in
    classifier features float64 [N]) of images x [N, 8, 8, 1] with their features [N, 64]."""
    train_px, train_feats = _copy_reference()[:2]
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    return nearest_distances(flat, train_px)[0], nearest_distances(feats, train_feats)[0]


def copying_metrics(x: np.ndarray, feats: np.ndarray) -> dict:
    """The copying figures (module doc) of images x [N, 8, 8, 1] (clipped) with their
    classifier features [N, 64]."""
    _, _, radius, px_ref, feat_ref, test_px, test_feat = _copy_reference()
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    d_px, d_feat = train_distances(x, feats)
    z_px, z_feat = test_px.test(flat), test_feat.test(feats)
    return {
        "nn_train_px_median": float(np.median(d_px)),
        "nn_train_feat_median": float(np.median(d_feat)),
        "nn_train_px_held_out": px_ref,
        "nn_train_feat_held_out": feat_ref,
        "exact_copy_fraction": float(np.mean(d_px <= EXACT_TOL)),
        "near_copy_fraction": float(np.mean(d_px < radius)),
        "near_copy_radius": radius,
        "distinct": distinct_count(flat),
        "copy_z": z_px["z"],
        "copy_z_feat": z_feat["z"],
        "copy_cells": z_px["cells"],
        "copying": z_px["copying"],
        "copy_threshold": z_px["threshold"],
    }


def within_class_spread(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Root-mean-square distance float64 [10] of each class's features [N, D] to their class
    mean (NaN for a class with fewer than 2 samples)."""
    f, labels = np.asarray(features, np.float64), np.asarray(labels)
    if f.ndim != 2 or labels.shape != (len(f),):
        raise ValueError(f"features must be [N, D] with labels [N], got {f.shape} and {labels.shape}")
    out = np.full(NUM_CLASSES, np.nan)
    for c in range(NUM_CLASSES):
        fc = f[labels == c]
        if len(fc) >= 2:
            out[c] = np.sqrt(((fc - fc.mean(0)) ** 2).sum(1).mean())
    return out


def diversity_ratio(features: np.ndarray, labels: np.ndarray, ref_features: np.ndarray,
                    ref_labels: np.ndarray) -> float:
    """Mean over the classes present in both sets of spread(generated) / spread(reference)."""
    gen, ref = within_class_spread(features, labels), within_class_spread(ref_features, ref_labels)
    ok = np.isfinite(gen) & np.isfinite(ref) & (ref > 0)
    if not ok.any():
        raise ValueError("no class has >= 2 samples in both the generated and the reference set")
    return float(np.mean(gen[ok] / ref[ok]))


def real_reference_fd() -> float:
    """FD between the training digits and the held-out digits (the real-data floor)."""
    (mu, cov), train_feats, _, _ = _held_out_stats()
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
    (mu, cov), _, ref_feats, ref_labels = _held_out_stats()
    feats = clf.features(x)
    fd = frechet_from_stats(*gaussian_stats(feats), mu, cov)
    pr = knn_precision_recall(ref_feats, feats, DEFAULT_K)
    return {
        "n": int(len(x)),
        "accuracy": float(correct.mean()),
        "per_class_accuracy": per_class,
        "fd": fd,
        "fd_real": real_reference_fd(),
        "precision": pr["precision"],
        "recall": pr["recall"],
        "pr_k": pr["k"],
        "pr_reference": f"held-out digits ({len(ref_feats)})",
        "diversity_ratio": diversity_ratio(feats, labels, ref_feats, ref_labels),
        "out_of_range": out_of_range,
        "classifier_held_out_accuracy": clf.held_out_accuracy,
        **copying_metrics(x, feats),
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
