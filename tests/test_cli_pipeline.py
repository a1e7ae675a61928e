"""The spice command line end to end on tiny data (subprocesses), and its failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import argv, spice_cli

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

pytestmark = pytest.mark.slow  # every test here runs the whole pipeline or the demo


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from spice import toy

    d = tmp_path_factory.mktemp("cli")
    data = toy.make_instruction_data(80, seed=3)
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    tok = toy.train_tokenizer([r["instruction"] + r["input"] + r["output"] for r in data], 300)
    model = toy.tiny_llama(len(tok), seed=1)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d


def test_features_select_report_end_to_end(workdir):
    d = workdir
    spice_cli(
        *argv(
            "features",
            "--quiet",
            model=d / "model",
            data=d / "data.jsonl",
            out=d / "store",
            dim=128,
            max_length=48,
        )
    )
    select = argv("select", features=d / "store", data=d / "data.jsonl", k=8, penalty=0.2)
    out = spice_cli(*select, "--out", str(d / "sel"))
    assert "selected 8 of 80" in out.stdout
    sel = json.loads((d / "sel" / "selection.json").read_text())
    lines = (d / "data.jsonl").read_text().splitlines()
    subset = (d / "sel" / "subset.jsonl").read_text().splitlines()
    assert subset == [lines[i] for i in sel["indices"]]  # the selected records, in pick order
    assert sel["stop_reason"] == "budget" and len(sel["indices"]) == 8
    assert sel["config"]["data_fingerprint"]["sha256"]
    info = json.loads((d / "sel" / "dataset_info.json").read_text())
    assert info["spice_subset"]["columns"]["response"] == "output"
    scores = (d / "sel" / "scores.csv").read_text().splitlines()
    assert len(scores) == 81 and scores[0].startswith("row,id,base_gain,selected")
    # the selection equals spice.select on the store's features
    import spice
    from spice.store import FeatureStore

    ref = spice.select(FeatureStore.open(d / "store"), 8, conflict_penalty=0.2)
    assert ref.indices.tolist() == sel["indices"]
    # rerun with the same inputs gives identical files (here with the w rows spilled to disk)
    first = {p.name: p.read_bytes() for p in (d / "sel").iterdir() if p.name != "timing.json"}
    (d / "spill").mkdir()
    spice_cli(*select, "--overwrite", "--out", str(d / "sel"), "--spill-dir", str(d / "spill"))
    assert list((d / "spill").iterdir()) == []
    again = {p.name: p.read_bytes() for p in (d / "sel").iterdir() if p.name != "timing.json"}
    assert first == again
    spice_cli("report", str(d / "sel"))
    for name in ("gains.png", "epsilon.png", "conflict.png", "report.md"):
        assert (d / "sel" / name).stat().st_size > 0


def test_failures_are_one_line(workdir):
    d = workdir
    select = dict(features=d / "store", data=d / "data.jsonl")
    r = spice_cli(*argv("select", **select, k=8, out=d / "sel"), check=False)
    assert r.returncode == 1 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    r = spice_cli(*argv("select", **select, k=500, out=d / "big"), check=False)
    assert r.returncode == 1 and "out of range" in r.stderr
    other = d / "other.jsonl"
    other.write_text((d / "data.jsonl").read_text().replace("Add", "Sum", 1))
    r = spice_cli(*argv("select", features=d / "store", data=other, k=3, out=d / "o"), check=False)
    assert r.returncode == 1 and "other data" in r.stderr
    bad = d / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": 3\n')
    r = spice_cli(
        *argv("features", "--quiet", model=d / "model", data=bad, out=d / "bs"), check=False
    )
    assert r.returncode == 1 and "bad.jsonl:2" in r.stderr
    r = spice_cli(
        *argv("features", model=d / "nope", data=d / "data.jsonl", out=d / "x"), check=False
    )
    assert r.returncode == 1 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_online_schedule_and_resume(workdir, tmp_path):
    from spice import toy
    from spice.features import load_records
    from spice.online import OnlineConfig, run_online
    from spice.pipeline import load_model

    records = load_records(workdir / "data.jsonl")[:40]

    def fresh():
        return load_model(str(workdir / "model"))[:2]

    base = dict(pool_size=8, picks_per_pool=2, lr=5e-2, dim=64, max_length=48, batch_size=8)
    for T in (1, 10):
        cfg = OnlineConfig(update_every=T, **base)
        m, tok = fresh()
        res = run_online(m, tok, records, tmp_path / f"T{T}", cfg, resume=False)
        assert len(res.indices) == 10 and len(set(res.indices.tolist())) == 10
        assert res.steps == (5 if T == 1 else 1)
        perm = np.random.default_rng(0).permutation(40)
        for p in range(5):  # each pick comes from its own pool
            assert set(res.indices[2 * p : 2 * p + 2].tolist()) <= set(
                perm[8 * p : 8 * p + 8].tolist()
            )
    # interrupted after 3 pools (T = 2: checkpoint after pool 2), then resumed: same picks
    cfg = OnlineConfig(update_every=2, **base)
    m, tok = fresh()
    full = run_online(m, tok, records, tmp_path / "full", cfg)
    m, tok = fresh()
    run_online(m, tok, records, tmp_path / "cut", cfg, stop_after_pools=3)
    m, tok = fresh()
    resumed = run_online(m, tok, records, tmp_path / "cut", cfg)
    assert resumed.resumed_from_pool == 2
    np.testing.assert_array_equal(resumed.indices, full.indices)
    assert toy is not None


def test_demo_quick(tmp_path):
    out = spice_cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert "selected 20 of 200" in out.stdout
    for name in ("subset.jsonl", "selection.json", "report.md", "gains.png"):
        assert (tmp_path / "demo" / name).is_file()
