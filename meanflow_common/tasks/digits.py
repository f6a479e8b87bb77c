"""The "digits" task: a class-conditional DiT on scikit-learn's 8x8 digits.

Batches {"x": float [B, H, W, C] NHWC in [-1, 1], "y": int [B] in [0, num_classes)}; the
network is a `DIT_PRESETS` DiT (`jax_meanflow.dit`, `torch_meanflow.dit`: NCHW, so the
torch hooks transpose), or for the imf / pmf methods an iMF / pMF DiT of
`DIGITS_IMF_PRESETS` / `DIGITS_PMF_PRESETS`; labels carry a null class num_classes for CFG. Scored by the fixed
digit classifier (accuracy, Fréchet distance, k-NN precision / recall, diversity) against
the trivial generators of `meanflow_common.evaluate.baselines`.
"""
from __future__ import annotations

import numpy as np

from meanflow_common.checks import check_labels
from meanflow_common.config import DIT_PRESETS
from meanflow_common.data import digits_dataset
from meanflow_common.imf_config import DIGITS_IMF_PRESETS, DIGITS_PMF_PRESETS
from meanflow_common.tasks.base import EvalOptions, Task
from meanflow_common.tasks.registry import register_task

__all__ = ["DIGITS"]


def _data_shape(mc) -> tuple:
    return (mc.input_size, mc.input_size, mc.in_channels)


def _check_batch(mc, batch) -> None:
    x, y = batch["x"], batch["y"]
    want = _data_shape(mc)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        hint = ""
        if x.ndim == 4 and (x.shape[1], *x.shape[2:]) == (want[2], want[0], want[1]):
            hint = " (it looks NCHW; the data interface gives NHWC images)"
        raise ValueError(
            f"image batch x has shape {tuple(x.shape)} but the DiT takes [B, {want[0]}, {want[1]}, {want[2]}] "
            f"NHWC (input_size={want[0]}, in_channels={want[2]}){hint}"
        )
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
    if y.ndim != 1 or y.min() < 0 or y.max() >= mc.num_classes:
        raise ValueError(f"labels y must be [B] in [0, {mc.num_classes}), got shape {y.shape}, "
                         f"range [{y.min()}, {y.max()}]")


def _check_cond(mc, cond, allow_null: bool) -> np.ndarray:
    # the JAX sampler runs under jit, where a bad label would silently index the wrong row
    return check_labels(cond, mc.num_classes, allow_null)


def _evaluate(sample, num_steps: int, options: EvalOptions, figure, title: str) -> dict:
    from meanflow_common.evaluate.digits_eval import digit_eval_inputs, score_digits

    noise, labels = digit_eval_inputs(options.n_per_class, options.seed)
    samples = np.asarray(sample(labels, noise=noise, num_steps=num_steps))
    metrics = score_digits(samples, labels)
    if figure:
        from meanflow_common.evaluate.plots import save_digit_grid

        save_digit_grid(samples, labels, figure, title=f"{title}: accuracy {metrics['accuracy']:.3f}")
    return metrics


def _anchors(options: EvalOptions):
    """(name, metrics) of each trivial digit generator, on the noise and labels a run gets."""
    from meanflow_common.evaluate.baselines import DIGIT_BASELINES
    from meanflow_common.evaluate.digits_eval import digit_eval_inputs, score_digits

    noise, labels = digit_eval_inputs(options.n_per_class, options.seed)
    for name, factory in DIGIT_BASELINES.items():
        gen = factory(options.seed)
        yield name, score_digits(np.asarray(gen(noise, labels)), labels)


DIGITS = register_task(Task(
    name="digits",
    dataset=digits_dataset,
    presets=DIT_PRESETS,
    preset_kind="DiT preset",
    batch_keys=("x", "y"),
    data_key="x",
    cond_key="y",
    float_keys=("x",),
    data_shape=_data_shape,
    layout="NHWC",
    check_batch=_check_batch,
    check_cond=_check_cond,
    hooks={"jax": "jax_meanflow.tasks:DIGITS", "torch": "torch_meanflow.tasks:DIGITS"},
    methods=("meanflow", "flow_matching", "imf", "pmf"),
    method_presets={"imf": (DIGITS_IMF_PRESETS, "iMF DiT preset"), "pmf": (DIGITS_PMF_PRESETS, "pMF DiT preset")},
    evaluate=_evaluate,
    eval_steps={"meanflow": (1, 2), "flow_matching": (1, 10), "imf": (1, 2), "pmf": (1, 2)},
    summary_metrics=("accuracy", "fd", "precision", "recall", "diversity_ratio", "nn_train_px_median",
                     "nn_train_feat_median", "exact_copy_fraction", "near_copy_fraction", "distinct", "copy_z"),
    anchors=_anchors,
), builtin=True)
