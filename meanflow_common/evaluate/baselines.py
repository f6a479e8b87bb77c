"""Trivial generators scored beside the trained models, so every figure has its anchors.

Digits (each a `generate_fn(noise, labels) -> images [N, 8, 8, 1]` NHWC on [-1, 1], fed the
same evaluation noise as the models; statistics from the TRAINING digits only):
- "class mean": the training mean image of the conditioning class, repeated (no diversity:
  recall ~0, diversity ratio 0, yet a high accuracy);
- "class mean + noise": that image plus white noise, one standard deviation per class (the
  root-mean-square pixel deviation of the class), i.e. variation without structure;
- "real training digits": training images of the conditioning class (the ceiling of recall
  and the floor of FD that this many samples can reach against the held-out set; it is a copy
  of the training set, and the copying test of `meanflow_common.evaluate.copying` says so);
- "copier (training, with replacement)": training digits of the class drawn uniformly with
  replacement: scores near the real-digits ceiling on FD / precision / recall, so only the
  copying figures (100% exact copies) can tell it from a good generator;
- "shrunk to class mean": mean + 0.5 (training digit - mean) of the class (a low FD with a
  low recall: FD alone ranks it above the trained models);
- "mode collapse (2 per class)": two fixed training digits per class, one of them at random
  per sample (recall 0, 20 distinct samples; it copies too).

Reach: the expert itself as a closed-loop policy (`meanflow_common.evaluate.expert_policy`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["DIGIT_BASELINES", "class_mean_generator", "class_mean_noise_generator", "real_digits_generator",
           "copier_generator", "shrunk_generator", "mode_collapse_generator"]

Generator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _train_by_class() -> dict:
    from meanflow_common.data import digits_dataset

    train = digits_dataset().train
    return {c: train["x"][train["y"] == c].astype(np.float64) for c in range(10)}


def _labels(labels, noise) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (len(noise),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer [N] = ({len(noise)},), got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"labels must be classes 0..9, got range [{labels.min()}, {labels.max()}]")
    return labels


def class_mean_generator(seed: int = 0) -> Generator:
    """The class's mean training image for every sample (deterministic: seed unused)."""
    means = np.stack([x.mean(0) for x in _train_by_class().values()])

    def gen(noise, labels):
        return means[_labels(labels, noise)]

    return gen


def class_mean_noise_generator(seed: int = 0) -> Generator:
    """The class mean plus sigma_c * noise, sigma_c the class's RMS pixel deviation (the
    randomness is the evaluation noise passed in: seed unused)."""
    by_class = _train_by_class()
    means = np.stack([x.mean(0) for x in by_class.values()])
    sigma = np.array([np.sqrt(((x - x.mean(0)) ** 2).mean()) for x in by_class.values()])

    def gen(noise, labels):
        labels = _labels(labels, noise)
        return means[labels] + sigma[labels, None, None, None] * np.asarray(noise, np.float64)

    return gen


def real_digits_generator(seed: int = 0) -> Generator:
    """Training digits of the conditioning class, in a fixed shuffled order per class,
    without repetition until a class's images are used up (then cycling). The position in
    each class carries over between calls, so generating in batches repeats nothing either."""
    rng = np.random.default_rng([seed, 10])
    pools = {c: x[rng.permutation(len(x))] for c, x in _train_by_class().items()}
    used = dict.fromkeys(pools, 0)

    def gen(noise, labels):
        labels = _labels(labels, noise)
        out = np.empty((len(labels), 8, 8, 1))
        for c in map(int, np.unique(labels)):
            rows = np.flatnonzero(labels == c)
            out[rows] = pools[c][(used[c] + np.arange(len(rows))) % len(pools[c])]
            used[c] += len(rows)
        return out

    return gen


def _drawing(pools: dict, rng: np.random.Generator, transform=lambda x, c: x) -> Generator:
    """A generator returning transform(pools[c][j], c), j drawn uniformly with replacement."""

    def gen(noise, labels):
        labels = _labels(labels, noise)
        out = np.empty((len(labels), 8, 8, 1))
        for c in map(int, np.unique(labels)):
            rows = np.flatnonzero(labels == c)
            out[rows] = transform(pools[c][rng.integers(len(pools[c]), size=len(rows))], c)
        return out

    return gen


def copier_generator(seed: int = 0) -> Generator:
    """Training digits of the conditioning class drawn uniformly with replacement."""
    return _drawing(_train_by_class(), np.random.default_rng([seed, 11]))


def shrunk_generator(seed: int = 0) -> Generator:
    """mean_c + 0.5 (x - mean_c), x a training digit of class c drawn with replacement."""
    by_class = _train_by_class()
    means = {c: x.mean(0) for c, x in by_class.items()}
    return _drawing(by_class, np.random.default_rng([seed, 12]), lambda x, c: means[c] + 0.5 * (x - means[c]))


def mode_collapse_generator(seed: int = 0) -> Generator:
    """One of two fixed training digits of the class (chosen per seed), at random per sample."""
    rng = np.random.default_rng([seed, 13])
    pools = {c: x[rng.choice(len(x), 2, replace=False)] for c, x in _train_by_class().items()}
    return _drawing(pools, rng)


# name -> factory(seed) -> generator; the evaluation table lists them in this order (the
# first three first, as before the copying anchors were added).
DIGIT_BASELINES = {
    "class mean": class_mean_generator,
    "class mean + noise": class_mean_noise_generator,
    "real training digits": real_digits_generator,
    "copier (training, with replacement)": copier_generator,
    "shrunk to class mean": shrunk_generator,
    "mode collapse (2 per class)": mode_collapse_generator,
}
