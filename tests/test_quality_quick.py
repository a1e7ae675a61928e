"""The evidence harness (bench/quality) runs end to end in --quick mode and writes its outputs.

Checks structure only (every selector row, diagnostics, theory checks), never who wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("scipy")

ROOT = Path(__file__).resolve().parents[1]


def test_quality_quick(tmp_path):
    out = tmp_path / "q"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    import spice  # the package under test, wherever it is installed (site-packages or python/)

    src = str(Path(spice.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(
        [src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality" / "run.py"), "--quick", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    required = ["random", "full", "topk-compat", "diag-compat", "fisher", "spice", "spice+",
                "less", "ifd"]  # fmt: skip
    for name in required:
        assert name in res["table"], name
        assert f"| {name} |" in md
        row = res["table"][name]
        assert 0.0 <= row["overall"][0] <= 1.0
        assert name in res["subset_stats"]
    # the online schedule is optional: either a row or a note saying why it was skipped
    assert "online" in res["table"] or res["online_note"].startswith("skipped")
    st = res["subset_stats"]
    assert st["full"]["size"] == res["n"]
    assert st["spice"]["size"] == res["k"]
    assert st["spice"]["jaccard_spice"] == pytest.approx(1.0)
    assert 0 < st["spice+"]["size"] <= res["k"]
    th = res["theory"]
    for key in ("spearman_conflict_gain", "spearman_conflict_abs_eps", "half_life_step",
                "curvature_c", "greedy_factor"):  # fmt: skip
        assert key in th
    assert 0.0 <= th["curvature_c"] <= 1.0
    for name in ("random", "fisher", "spice"):
        assert len(res["curve"][name]) >= 2
    assert res["wall_s"] > 0
