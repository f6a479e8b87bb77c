"""PNG figures of the evaluation: digit sample grids and reach rollouts (matplotlib, Agg)."""
from __future__ import annotations

import os

import numpy as np

from meanflow_common.data import reach
from meanflow_common.evaluate.rollout import RolloutResult

__all__ = ["save_digit_grid", "save_rollouts"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def save_digit_grid(samples: np.ndarray, labels: np.ndarray, path: str, per_class: int = 10,
                    title: str = "") -> str:
    """A 10 x per_class grid (one row per class) of images [N, 8, 8, 1] on [-1, 1]."""
    plt = _pyplot()
    samples, labels = np.asarray(samples), np.asarray(labels)
    cell = 9  # 8 pixels and a 1-pixel white gutter
    mosaic = np.full((10 * cell, per_class * cell), -1.0)
    for c in range(10):
        for j, row in enumerate(np.flatnonzero(labels == c)[:per_class]):
            mosaic[c * cell:c * cell + 8, j * cell:j * cell + 8] = np.clip(samples[row, ..., 0], -1, 1)
    fig, ax = plt.subplots(figsize=(per_class * 0.45, 4.8))
    ax.imshow(mosaic, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(np.arange(10) * cell + 3.5, [str(c) for c in range(10)])
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout(pad=0.2)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_rollouts(result: RolloutResult, path: str, max_paths: int = 60, title: str = "") -> str:
    """The workspace, the obstacle, and the rollout paths (green success, red collision,
    grey timeout), starts as dots and goals as crosses; axes in workspace units, a legend
    with the count of each outcome among all rollouts."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(7.2, 5))
    ax.add_patch(plt.Circle(reach.OBSTACLE_CENTER, reach.OBSTACLE_RADIUS, color="0.3", alpha=0.6))
    for box, colour in ((reach.START_BOX, "tab:blue"), (reach.GOAL_BOX, "tab:orange")):
        (x0, y0), (x1, y1) = box
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", color=colour))
    outcome = (("success", result.success, "tab:green"), ("collision", result.collided, "tab:red"),
               ("timeout", result.timeout, "0.5"))
    for i in range(min(max_paths, len(result.success))):
        p = result.paths[i, : result.steps[i] + 1]
        colour = next(c for _, mask, c in outcome if mask[i])
        ax.plot(p[:, 0], p[:, 1], color=colour, lw=0.8, alpha=0.8)
        ax.plot(*result.starts[i], ".", color="tab:blue", ms=3)
        ax.plot(*result.goals[i], "x", color="tab:orange", ms=3)
    shown = min(max_paths, len(result.success))
    handles = [Line2D([], [], color=c, lw=1.5, label=f"{name} ({int(mask.sum())}/{len(mask)})")
               for name, mask, c in outcome]
    handles += [Patch(color="0.3", alpha=0.6, label="obstacle"),
                Line2D([], [], ls="", marker=".", color="tab:blue", label="start (box dashed)"),
                Line2D([], [], ls="", marker="x", color="tab:orange", label="goal (box dashed)")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0.0,
              title=f"{shown} of {len(result.success)} paths drawn", title_fontsize=7)
    ax.set_xlim(-reach.BOUND, reach.BOUND)
    ax.set_ylim(-reach.BOUND, reach.BOUND)
    ax.set_aspect("equal")
    ax.set_xlabel("x (workspace units)")
    ax.set_ylabel("y (workspace units)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
