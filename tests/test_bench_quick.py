"""Every benchmark script runs end to end in its --quick mode (seconds), so none can rot between
the full runs whose figures bench/RESULTS.md records. Each run's own correctness checks (identical
picks against the numpy and explicit-kernel baselines) are asserted here too."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # each test runs a benchmark script end to end (minutes in all)


def run_bench(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    import spice

    # The scripts must import the spice this test imported (an installed wheel in CI, the
    # source tree with an in-place build for developers), not whatever the tree holds.
    env = dict(os.environ)
    home = str(Path(spice.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [home] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_scale_bench_quick(tmp_path):
    r = run_bench("scale_bench.py", "--quick", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "## 1. Roofline" in out and "threads=2" in out
    assert "first 100 picks equal: 100/100" in out  # run 2: lazy == numpy non-lazy
    assert re.search(r"ceiling: .* FMAs take [0-9.]+ s at numpy's float64 GEMM rate", out)
    assert "identical picks: True" in out  # run 3: lazy == explicit-kernel DPP MAP
    # runs 4/5 path: a float16 memmap, both methods to the end
    assert "| stochastic | 2000 |" in out and "| lazy | 2000 |" in out
    assert "| lazy, w rows spilled | 2000 |" in out  # spill_dir: same picks, same log det
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| lazy")]
    assert len({r[5].strip() for r in rows}) == 1
    assert (tmp_path / "feats_20000x64_f16.bin").stat().st_size == 20000 * 64 * 2


def test_select_bench_quick():
    r = run_bench("select_bench.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert re.search(r"\| spice naive \| [0-9.]+ \|", r.stdout)
    assert "True (200 picks)" in r.stdout  # naive == lazy
    assert "200/200 equal" in r.stdout


def test_features_bench_quick(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    md = tmp_path / "features.md"
    r = run_bench("features_bench.py", "--quick", "--markdown", str(md))
    assert r.returncode == 0, r.stderr
    text = md.read_text()
    assert "(c) spice" in text and "(a) authors" in text


def test_gpu_bench_quick_without_a_gpu_says_why(tmp_path):
    from spice import gpu

    ok, _ = gpu.available()
    if ok:
        pytest.skip("a GPU is present: bench/gpu_check.sh runs the real thing")
    r = run_bench("gpu_bench.py", "--quick", "--out", str(tmp_path / "gpu.md"))
    assert r.returncode == 2
    assert "CuPy" in r.stdout or "CUDA" in r.stdout or "GPU" in r.stdout
    assert not (tmp_path / "gpu.md").exists()


def test_extract_memory_quick():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    r = run_bench("extract_memory.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert re.search(r"rows1 +[0-9.]+ s/record +[0-9]+ tok/s +peak +[0-9.]+ GB", r.stdout)
    assert re.search(r"tok512 +[0-9.]+ s/record", r.stdout)
    assert "40 featurised, 8 skipped with a zero row" in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed")
def test_distributed_bench_quick():
    r = run_bench("distributed_bench.py", "--quick")
    assert r.returncode == 0, r.stderr
    assert "identical picks and gains: True" in r.stdout
    assert re.search(r"greedy loop [0-9.]+ s, [0-9.]+ ms/pick", r.stdout)
