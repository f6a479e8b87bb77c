"""Training metrics shared by both trainers: CSV (+ TensorBoard), progress bar, loss plots.

Framework-free: the JAX trainer must not import torch, so TensorBoard goes through
`tensorboardX` when it is installed (`tensorboardx_writer`), or through a writer the
caller passes in (the torch trainer passes `torch.utils.tensorboard`'s when importable).
Without either, metrics go to the CSV only.

CSV columns: step (updates done), loss, v_loss, grad_norm, lr, steps_per_s, samples_per_s
(the global batch: steps_per_s * batch_size), devices (data-parallel devices), wall_s.
Floats are written with `repr`, so a resumed run can be compared bit for bit.
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
    "read_metrics",
    "plot_losses",
    "tensorboardx_writer",
]

COLUMNS = ("step", "loss", "v_loss", "grad_norm", "lr", "steps_per_s", "samples_per_s", "devices", "wall_s")


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
    the interrupted run) are dropped, so the file reads as one uninterrupted run.
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


class ProgressBar:
    """A one-line progress bar on stderr: steps done, loss, steps/s, samples/s, devices.

    On a terminal it redraws in place; otherwise (logs, CI) it prints a line every
    `every` updates. enabled=False silences it. batch_size: the global batch (samples/s
    counts it); devices, processes: the data-parallel devices and trainer processes.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every: int = 50, stream=None,
                 batch_size: int = 0, devices: int = 1, processes: int = 1):
        self.total, self.enabled, self.every = total, enabled, max(1, every)
        self.batch_size, self.devices, self.processes = batch_size, devices, processes
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._t0, self._s0 = time.perf_counter(), start

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        if not self.tty and step % self.every and step != self.total:
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        rate = (step - self._s0) / elapsed
        width = 24
        filled = int(width * step / max(self.total, 1))
        text = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} loss {loss:.4g} {rate:.2f} steps/s"
        if self.batch_size:
            text += f" {rate * self.batch_size:.1f} samples/s"
        text += f" ({self.devices} device{'s' if self.devices != 1 else ''}"
        text += f", {self.processes} processes)" if self.processes > 1 else ")"
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def plot_losses(csv_path: str, png_path: str, title: str = "") -> Optional[str]:
    """Loss curves (loss, v_loss; gradient norm and learning rate below) as a PNG.

    Returns the PNG path, or None when the CSV has no rows yet.
    """
    rows = read_metrics(csv_path)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for key in ("loss", "v_loss"):
        values = [r[key] for r in rows]
        ax0.plot(steps, values, label=key)
    if all(r["loss"] > 0 and r["v_loss"] > 0 for r in rows):
        ax0.set_yscale("log")
    ax0.set_ylabel("loss")
    ax0.legend()
    ax0.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(csv_path))))
    ax1.plot(steps, [r["grad_norm"] for r in rows], label="grad_norm", color="tab:green")
    ax1.set_ylabel("gradient norm")
    ax1.set_xlabel("step")
    lr_ax = ax1.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], label="lr", color="tab:red", linestyle="--")
    lr_ax.set_ylabel("learning rate")
    fig.tight_layout()
    tmp = png_path + ".part.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path
