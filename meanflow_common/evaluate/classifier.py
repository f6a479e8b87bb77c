"""The fixed digit classifier of the evaluation (scikit-learn, deterministic).

An `MLPClassifier` with one hidden layer of 64 ReLU units (L-BFGS, L2 alpha 1e-2,
random_state 0) fitted on the TRAINING digits of `meanflow_common.data` (pixels in
[-1, 1], flattened to 64). Its held-out accuracy is part of every report. The features
for the Fréchet distance are its penultimate activations (the 64 hidden ReLU units).

Fitting takes well under a second on one core and is cached per process; BLAS threads are
limited to one while fitting because on a small shared CPU the thread contention of the
default pool makes it tens of times slower.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["DigitClassifier", "get_classifier", "HIDDEN", "check_images"]

HIDDEN = 64


def check_images(x: np.ndarray, what: str = "images") -> np.ndarray:
    """float64 [N, 8, 8, 1] NHWC; a clear error for NCHW or other shapes."""
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1:] == (1, 8, 8):
        raise ValueError(f"{what} look NCHW {x.shape}; the evaluation takes NHWC [N, 8, 8, 1]")
    if x.ndim != 4 or x.shape[1:] != (8, 8, 1):
        raise ValueError(f"{what} must be NHWC [N, 8, 8, 1], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{what} must be floating point in [-1, 1], got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or inf")
    return x.astype(np.float64)


@dataclass(frozen=True, eq=False)
class DigitClassifier:
    """A fitted classifier; `held_out_accuracy` is measured on the held-out digits."""

    model: object
    held_out_accuracy: float
    train_accuracy: float

    def _flat(self, x) -> np.ndarray:
        return check_images(x).reshape(len(x), -1)

    def features(self, x) -> np.ndarray:
        """Penultimate (hidden ReLU) activations float64 [N, 64] of images [N, 8, 8, 1]."""
        m = self.model
        return np.maximum(self._flat(x) @ m.coefs_[0] + m.intercepts_[0], 0.0)

    def predict_proba(self, x) -> np.ndarray:
        """Class probabilities [N, 10]."""
        return self.model.predict_proba(self._flat(x))

    def predict(self, x) -> np.ndarray:
        """Predicted classes int64 [N]."""
        return self.model.predict(self._flat(x)).astype(np.int64)


@functools.lru_cache(maxsize=1)
def get_classifier() -> DigitClassifier:
    """The fitted evaluation classifier (cached; the same weights on every call and run)."""
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    from meanflow_common.data import digits_dataset

    data = digits_dataset()
    x_train = data.train["x"].reshape(len(data), -1).astype(np.float64)
    clf = MLPClassifier(hidden_layer_sizes=(HIDDEN,), activation="relu", solver="lbfgs",
                        alpha=1e-2, max_iter=500, random_state=0)
    with threadpool_limits(limits=1):
        clf.fit(x_train, data.train["y"])
    x_test = data.test["x"].reshape(len(data.test["y"]), -1).astype(np.float64)
    return DigitClassifier(
        model=clf,
        held_out_accuracy=float(clf.score(x_test, data.test["y"])),
        train_accuracy=float(clf.score(x_train, data.train["y"])),
    )
