"""What a user reads while and after training, on both backends: the unweighted loss and
v_loss in the progress line, the "done" line and loss.png (the adaptive-weighted loss,
~1 whatever happens, only in metrics.csv), elapsed time and ETA, `wall_s` as elapsed
seconds and `cpu_s` as the CPU seconds of the same span, plain progress lines off a terminal, and no documented command silencing them.

Runs start from randomised parameters (the DiT's zero-initialised layers make u == 0).
"""
import io
import os
import re
import time

import numpy as np
import pytest

from meanflow_common import metrics as M
from meanflow_common.data import batch_at
from meanflow_common.tasks import get_dataset
from meanflow_common.train_cli import done_line
from meanflow_common.train_config import TRAIN_PRESETS, apply_assignments

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_init(backend, cfg, dataset):
    if backend == "jax":
        from jax_meanflow import train
        from jax_meanflow.params import randomize_params

        _, params = train.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
        return train, randomize_params(params, 3)
    from torch_meanflow import train
    from torch_meanflow.params import randomize_params

    model = train.make_model(cfg, batch_at(dataset, cfg.seed, 0, cfg.batch_size))
    return train, {k: v.clone() for k, v in randomize_params(model, 3).state_dict().items()}


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits", 0)


def _cfg(tmp_path, name, *sets):
    return apply_assignments(TRAIN_PRESETS["tiny"], [f"out_dir={tmp_path / name}", *sets])


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_an_absurd_learning_rate_shows_in_the_displayed_loss(tmp_path, capsys, digits, backend):
    """lr = 1 (1000 times the preset's; from randomised weights lr >= 100 overflows to NaN
    at the second update): one update takes the unweighted loss from ~1e2 to ~1e12-1e16
    while the adaptive-weighted loss the optimiser sees stays ~1 (1 - 1e-4, then 1.0). The
    bar, the done line and loss.png must show the exploding one."""
    cfg = _cfg(tmp_path, backend, "steps=2", "log_every=1", "optim.lr=1")
    train, init = _random_init(backend, cfg, digits)
    capsys.readouterr()
    result = train.train(cfg, dataset=digits, init_params=init, progress=True)
    bar = capsys.readouterr().err
    rows = M.read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.99 < r["weighted_loss"] <= 1.0 for r in rows), rows
    assert rows[1]["loss"] > 1e6 * rows[0]["loss"] > 1e6 and rows[1]["v_loss"] > 1e6, rows
    assert result.losses == {r["step"]: r["loss"] for r in rows}

    # the progress line of the last update: its loss and v_loss are the CSV's unweighted ones
    m = re.search(r"^step 2/2 loss (\S+) v_loss (\S+) ", bar, re.M)
    assert m, bar
    assert float(m.group(1)) == pytest.approx(rows[1]["loss"], rel=1e-3)
    assert float(m.group(2)) == pytest.approx(rows[1]["v_loss"], rel=1e-3)

    line = done_line(result)
    m = re.search(r"last loss ([^\s,]+), v_loss (\S+) \(weighted loss ([^\s)]+)\)", line)
    assert m, line
    assert float(m.group(1)) == pytest.approx(rows[1]["loss"], rel=1e-4)
    assert float(m.group(2)) == pytest.approx(rows[1]["v_loss"], rel=1e-4)
    assert float(m.group(3)) == pytest.approx(rows[1]["weighted_loss"], rel=1e-4)

    fig = M.loss_figure(rows)
    try:
        curves = [np.asarray(line.get_ydata()) for line in fig.axes[0].lines]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    np.testing.assert_array_equal(curves[0], [r["loss"] for r in rows])
    np.testing.assert_array_equal(curves[1], [r["v_loss"] for r in rows])
    assert os.path.getsize(os.path.join(cfg.out_dir, "loss.png")) > 0


def _timed_run(tmp_path, digits, backend, steps: int):
    """(config, train module, metrics rows, wall seconds) of a run from a random init,
    logging every step."""
    cfg = _cfg(tmp_path, backend, f"steps={steps}", "log_every=1")
    train, init = _random_init(backend, cfg, digits)
    t0 = time.perf_counter()
    train.train(cfg, dataset=digits, init_params=init, progress=False)
    wall = time.perf_counter() - t0
    return cfg, train, M.read_metrics(os.path.join(cfg.out_dir, "metrics.csv")), wall


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_wall_s_is_seconds_since_the_run_or_resumed_segment_started(tmp_path, digits, backend):
    cfg, train, rows, first = _timed_run(tmp_path, digits, backend, 3)
    wall = [r["wall_s"] for r in rows]
    assert 0 < wall[0] <= wall[1] <= wall[2] <= first, (wall, first)

    t0 = time.perf_counter()
    train.train(apply_assignments(cfg, ["steps=5"]), dataset=digits, resume=True, progress=False)
    second = time.perf_counter() - t0
    rows = M.read_metrics(os.path.join(cfg.out_dir, "metrics.csv"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["wall_s"] for r in rows[:3]] == wall  # the first segment's rows are kept as written
    assert 0 < rows[3]["wall_s"] <= rows[4]["wall_s"] <= second, (rows, second)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_cpu_s_is_the_process_cpu_time_since_the_run_started(tmp_path, digits, backend):
    """cpu_s grows with every logged step and cannot exceed the wall time of the same span
    times the cores the process can run on (plus the clocks' granularity). The process has
    spent far more CPU before the run (imports, the model build, other tests) than on the
    run's tiny steps, so a cpu_s counted from the process's start fails the bound."""
    _, _, rows, wall = _timed_run(tmp_path, digits, backend, 4)
    cpu = [r["cpu_s"] for r in rows]
    assert 0 < cpu[0] < cpu[1] < cpu[2] < cpu[3], cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for r in rows:
        assert r["cpu_s"] <= r["wall_s"] * cores + 0.05, (r, cores)
    assert cpu[-1] <= wall * cores + 0.05, (cpu, wall, cores)


def test_resuming_a_file_without_weighted_loss_moves_its_loss_there(tmp_path):
    """Before weighted_loss existed, the CSV's loss column held the weighted loss."""
    (tmp_path / "metrics.csv").write_text("step,loss,v_loss,grad_norm,lr,steps_per_s,samples_per_s,devices,wall_s\n"
                                          "1,0.9999,150.0,3.0,0.001,2.0,16.0,1,7.5\n"
                                          "2,0.9998,120.0,2.5,0.001,2.0,16.0,1,8.0\n"
                                          "3,0.9997,110.0,2.0,0.001,2.0,16.0,1,8.5\n")
    logger = M.MetricsLogger(str(tmp_path), resume_step=2)
    logger.log(3, {"loss": 100.0, "v_loss": 101.0, "weighted_loss": 0.9999, "grad_norm": 1.0, "lr": 1e-3})
    logger.close()
    rows = M.read_metrics(str(tmp_path / "metrics.csv"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["weighted_loss"] for r in rows] == [0.9999, 0.9998, 0.9999]
    assert np.isnan(rows[0]["loss"]) and np.isnan(rows[1]["loss"]) and rows[2]["loss"] == 100.0
    assert [r["v_loss"] for r in rows] == [150.0, 120.0, 101.0]


class _Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_has_elapsed_time_and_eta(monkeypatch):
    clock = _Clock(1000.0)
    monkeypatch.setattr(M.time, "perf_counter", clock)
    buf = io.StringIO()
    bar = M.ProgressBar(10, 0, every=2, stream=buf, batch_size=8)
    clock.t += 30.0
    bar.update(2, 1.5, 2.5)  # 2 steps in 30 s: 8 left take 120 s
    assert buf.getvalue() == ("step 2/10 loss 1.5 v_loss 2.5 0.07 steps/s 0.5 samples/s (1 device) "
                              "elapsed 0:30 eta 2:00\n")

    resumed = io.StringIO()  # a resumed segment counts its own updates and time
    bar = M.ProgressBar(10, 4, every=2, stream=resumed)
    clock.t += 3700.0
    bar.update(6, 1.0)  # 2 steps in 3700 s: 4 left take 7400 s
    assert resumed.getvalue().endswith("elapsed 1:01:40 eta 2:03:20\n"), resumed.getvalue()

    tty = _Tty()
    bar = M.ProgressBar(4, 0, stream=tty)
    clock.t += 10.0
    bar.update(1, 0.25, 0.5)
    text = tty.getvalue()
    assert text.startswith("\r[######..................] 1/4 loss 0.25 v_loss 0.5 ") and "eta 0:30" in text, text
    assert M.format_seconds(float("inf")) == "?"


def test_off_a_terminal_progress_is_a_plain_line_every_n_updates():
    buf = io.StringIO()
    bar = M.ProgressBar(7, 0, every=3, stream=buf)
    for k in range(1, 8):
        bar.update(k, 0.5, 0.75)
    bar.close()
    lines = buf.getvalue().split("\n")
    assert lines[-1] == "" and "\r" not in buf.getvalue() and "[" not in buf.getvalue()
    assert [ln.split()[1] for ln in lines[:-1]] == ["3/7", "6/7", "7/7"]  # every 3rd and the last
    assert all(re.fullmatch(r"step \d/7 loss 0\.5 v_loss 0\.75 .* elapsed \d+:\d\d eta \d+:\d\d", ln)
               for ln in lines[:-1]), lines


def test_documented_training_commands_keep_their_progress_lines():
    docs = [os.path.join(ROOT, "README.md")] + [os.path.join(ROOT, "docs", n)
                                                for n in sorted(os.listdir(os.path.join(ROOT, "docs")))
                                                if n.endswith(".md")]
    silenced = []
    for path in docs:
        with open(path) as f:
            text = f.read()
        for m in re.finditer(r"(?:[^\n]*\\\n)*[^\n]*", text):  # a command with its continuation lines
            if re.search(r"_meanflow\.train\b.*--no-progress", m.group().replace("\\\n", " ")):
                silenced.append(f"{os.path.relpath(path, ROOT)}:{text.count(chr(10), 0, m.start()) + 1}")
    assert not silenced, f"documented training commands pass --no-progress: {silenced}"
