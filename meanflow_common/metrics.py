"""Training metrics shared by both trainers: CSV (+ TensorBoard), progress bar, loss plots.

Framework-free: the JAX trainer must not import torch, so TensorBoard goes through
`tensorboardX` when it is installed (`tensorboardx_writer`), or through a writer the
caller passes in (the torch trainer passes `torch.utils.tensorboard`'s when importable).
Without either, metrics go to the CSV only.

CSV columns: step (updates done), loss (the batch mean of the unweighted per-sample loss
sum (u - u_tgt)^2, the figure the bar, the "done" line and loss.png show), v_loss (batch
mean of sum (u - v)^2), weighted_loss (the adaptive-weighted loss the optimiser minimises;
near 1 whatever happens with norm_p = 1), grad_norm, lr, steps_per_s, samples_per_s (the
global batch: steps_per_s * batch_size), devices (data-parallel devices), wall_s (seconds
since this run, or this resumed segment, started), cpu_s (CPU seconds, user + system over all
of the process's threads, that the trainer process spent over the same span: the budget of a
run on a shared machine, whatever the other jobs' load). Floats are written with `repr`, so a
resumed run can be compared bit for bit.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Any, Mapping, Optional

__all__ = [
    "COLUMNS",
    "NonFiniteLossError",
    "check_finite",
    "MetricsLogger",
    "ProgressBar",
    "format_seconds",
    "read_metrics",
    "plot_losses",
    "loss_figure",
    "LOSS_CURVES",
    "tensorboardx_writer",
]

COLUMNS = ("step", "loss", "v_loss", "weighted_loss", "grad_norm", "lr", "steps_per_s", "samples_per_s", "devices",
           "wall_s", "cpu_s")
LOSS_CURVES = ("loss", "v_loss")  # what loss.png draws: the unweighted figures


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the run stopped (the message names the step)."""


def check_finite(step: int, loss: float, last_checkpoint: Optional[str]) -> None:
    """Raise NonFiniteLossError when `loss` (of update number `step`) is NaN or inf."""
    if math.isfinite(loss):
        return
    where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    raise NonFiniteLossError(
        f"non-finite loss ({loss}) at step {step}: the run stopped before applying this update; {where}"
    )


def tensorboardx_writer(logdir: str):
    """A tensorboardX SummaryWriter, or None when tensorboardX is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir)


class MetricsLogger:
    """Appends one CSV row per logged step (and TensorBoard scalars when a writer is given).

    resume_step: on resume, rows after this step (written after the last checkpoint by
    the interrupted run) are dropped, so the file reads as one uninterrupted run. A file
    written before the CSV had a weighted_loss column held the weighted loss under `loss`:
    its rows move that value to weighted_loss and leave loss NaN (never relabelled).
    """

    def __init__(self, run_dir: str, resume_step: Optional[int] = None, tb_writer: Any = None):
        self.path = os.path.join(run_dir, "metrics.csv")
        self.tb = tb_writer
        if resume_step is None or not os.path.exists(self.path):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)
        else:
            self._truncate(resume_step)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.writer(self._file)

    def _truncate(self, step: int) -> None:
        rows = [r for r in read_metrics(self.path) if r["step"] <= step]
        if rows and "weighted_loss" not in rows[0]:
            rows = [{**r, "weighted_loss": r.get("loss", math.nan), "loss": math.nan} for r in rows]
        tmp = self.path + ".part"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow([_fmt(r.get(c, float("nan"))) for c in COLUMNS])  # older files lack columns
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items() if k != "step"}}
        self._writer.writerow([_fmt(row.get(c, float("nan"))) for c in COLUMNS])
        self._file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"train/{k}", v, int(step))

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else repr(float(v))


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.csv as dicts (step int, the rest float).

    An incomplete last row (a write cut short by a kill) is dropped; a damaged row elsewhere
    is a ValueError naming the file and the line.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows):
        try:
            out.append({k: (int(v) if k == "step" else float(v)) for k, v in row.items()})
        except (TypeError, ValueError) as err:
            if i == len(rows) - 1:
                break
            raise ValueError(f"{path}: line {i + 2} is not a metrics row ({err})") from err
    return out


def format_seconds(seconds: float) -> str:
    """Seconds as H:MM:SS (M:SS under an hour); "?" when not finite."""
    if not math.isfinite(seconds):
        return "?"
    total = int(round(max(seconds, 0.0)))
    h, rest = divmod(total, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressBar:
    """Progress on stderr: steps done, loss and v_loss (unweighted), steps/s, samples/s,
    devices, elapsed time and the estimated time left.

    On a terminal it is a bar redrawn in place; otherwise (logs, CI, a file) it prints a
    plain line every `every` updates and at the last one. enabled=False silences it.
    batch_size: the global batch (samples/s counts it); devices, processes: the
    data-parallel devices and trainer processes. Elapsed time counts from the bar's
    creation (this run or resumed segment); the ETA divides the updates left by the mean
    rate of this segment so far.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 50, stream=None,
                 batch_size: int = 0, devices: int = 1, processes: int = 1):
        self.total, self.enabled, self.every = total, enabled, max(1, every)
        self.batch_size, self.devices, self.processes = batch_size, devices, processes
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0, self._s0 = time.perf_counter(), start

    def update(self, step: int, loss: float, v_loss: Optional[float] = None) -> None:
        if not self.enabled:
            return
        if not self.tty and step % self.every and step != self.total:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (step - self._s0) / elapsed
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        text = f"{step}/{self.total} loss {loss:.4g}"
        if v_loss is not None:
            text += f" v_loss {v_loss:.4g}"
        text += f" {rate:.2f} steps/s"
        if self.batch_size:
            text += f" {rate * self.batch_size:.1f} samples/s"
        text += f" ({self.devices} device{'s' if self.devices != 1 else ''}"
        text += f", {self.processes} processes)" if self.processes > 1 else ")"
        text += f" elapsed {format_seconds(elapsed)} eta {format_seconds(eta)}"
        if self.tty:
            width = 24
            filled = int(width * step / max(self.total, 1))
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text}\033[K")
        else:
            self.stream.write(f"step {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def plot_losses(csv_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Loss curves as a PNG: the unweighted loss and v_loss (log scale when positive) above,
    gradient norm and learning rate below. The adaptive-weighted loss is not drawn: it sits
    near 1 whatever the model does (it stays in the CSV).

    Returns the PNG path, or None when the CSV has no rows yet.
    """
    rows = read_metrics(csv_path)
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig = loss_figure(rows, title or os.path.basename(os.path.dirname(os.path.abspath(csv_path))))
    tmp = png_path + ".part.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


def loss_figure(rows: list, title: str = ""):
    """The matplotlib Figure of `plot_losses` for metrics rows (dicts as `read_metrics` gives):
    axes[0] holds one line per LOSS_CURVES column, in that order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    labels = {"loss": "loss (unweighted, sum (u - u_tgt)^2)", "v_loss": "v_loss (sum (u - v)^2)"}
    for key in LOSS_CURVES:
        ax0.plot(steps, [r[key] for r in rows], label=labels[key])
    if all(r[k] > 0 for r in rows for k in LOSS_CURVES):
        ax0.set_yscale("log")
    ax0.set_ylabel("per-sample loss (batch mean)")
    ax0.legend()
    ax0.set_title(title)
    ax1.plot(steps, [r["grad_norm"] for r in rows], label="grad_norm", color="tab:green")
    ax1.set_ylabel("gradient norm")
    ax1.set_xlabel("step")
    lr_ax = ax1.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], label="lr", color="tab:red", linestyle="--")
    lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    return fig
