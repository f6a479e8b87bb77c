"""`python -m parity.bench.parity_cost`: its memory sampling counts children, its timeline
records the real suite's steps and restores the harness afterwards."""
from __future__ import annotations

import pytest

import json
import os
import subprocess
import textwrap
import sys
import time

from parity.bench import parity_cost
from parity.bench.measure import RssSampler, _rss_bytes, tree_rss_bytes
from parity.core import harness as H

pytestmark = pytest.mark.heavy  # make test-fast leaves it out (make test runs it)

TINY = ["--arch", "dit", "--preset", "tiny", "--variant", "no cfg", "--dtype", "float32", "--batch", "3",
        "--trained-steps", "0"]


def test_the_process_tree_counts_a_child_holding_memory():
    """Negative control built in: a child holding 300 MB raises the tree's resident set by
    that much over this process's own, which alone would not see it."""
    code = "import numpy as np, sys, time; a = np.ones(300 * 2**20 // 8); print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        own, tree = _rss_bytes(), tree_rss_bytes(os.getpid())
        assert tree - own > 250 * 2**20
        sampler = RssSampler(0.01, lambda: tree_rss_bytes(os.getpid()))
        time.sleep(0.1)
        assert sampler.stop() - own > 250 * 2**20
    finally:
        child.kill()
        child.wait()


def test_timeline_records_the_suites_steps_and_restores_the_harness(capsys):
    original = H.run_jax
    report = parity_cost.timeline_run(TINY + ["--checks", "x64off"])
    assert report["returncode"] == 0 and H.run_jax is original
    calls = [r["call"] for r in report["calls"]]
    # the x64-off child starts first and is waited on after the first variant's compilation
    assert calls.index("X64OffRun.__init__") < calls.index("compile_variant") < calls.index("X64OffRun.wait")
    assert calls.count("reference_own_errors") == 1 and calls.count("run_torch") == 1  # one variant
    assert all(r["wall_s"] >= 0 and r["peak_tree_rss_gb"] > 0.1 for r in report["calls"])
    assert "| total |" in parity_cost.markdown(report)


def test_suite_mode_reports_the_largest_process_and_the_tree():
    """The largest process is the suite's own (wait4 on it), not the largest child this
    process ever waited for (RUSAGE_CHILDREN): a 3 GB child run first must not show. A
    child's high-water mark starts at its spawning parent's resident set, so the measuring
    process is a small one of its own (not this test process, which may already hold GBs)."""
    code = textwrap.dedent(f"""
        import json, subprocess, sys
        subprocess.run([sys.executable, "-c", "import numpy as np; a = np.ones(3 * 2**30 // 8)"], check=True)
        from parity.bench import parity_cost
        row = parity_cost.suite_run({TINY + ["--checks", "none"]!r}, timeout=600)
        print(json.dumps(row))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["returncode"] == 0 and row["peak_rss_gb"] < 2.5, row
    assert row["peak_tree_rss_gb"] >= 0.9 * row["peak_rss_gb"] > 0.1
