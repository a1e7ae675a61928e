"""The default thread count follows the load: with other processes busy on every usable CPU it
is 1 (more threads would wait at every parallel region's barrier for a parked thread), and the
picks never depend on the thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import spice
from spice import _core


def test_picks_do_not_depend_on_the_thread_count():
    G = np.random.default_rng(0).standard_normal((3000, 96)).astype(np.float32)
    runs = [spice.select(G, 150, threads=t) for t in (1, 2, 3, None)]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.indices, runs[0].indices)
        np.testing.assert_array_equal(r.gains, runs[0].gains)  # bit for bit
        np.testing.assert_array_equal(r.scores, runs[0].scores)


def test_auto_threads_is_at_least_one_and_honours_omp_num_threads():
    assert 1 <= _core.auto_threads() <= max(1, os.cpu_count() or 1)
    code = "from spice import _core; print(_core.auto_threads())"
    env = {**os.environ, "OMP_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == ("3" if _core.openmp else "1"), out.stderr


@pytest.mark.skipif(not _core.openmp, reason="built without OpenMP")
def test_busy_processes_on_every_cpu_leave_one_thread():
    usable = len(os.sched_getaffinity(0))
    if usable > 8 or usable != os.cpu_count():
        pytest.skip("needs the whole machine's CPUs (at most 8) to load them all")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    code = "from spice import _core; print(_core.auto_threads())"
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable)]
    try:
        time.sleep(0.5)  # past their start-up
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert out.stdout.strip() == "1", out.stderr


def test_load_bench_quick_runs():
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "load_bench.py"
    out = subprocess.run(
        [sys.executable, str(script), "--quick", "--busy", "1", "--settings", "threads=1;default"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "| default |" in out.stdout and "busy=1" in out.stdout
