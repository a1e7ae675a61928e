"""What the numpy-only install can do: select from an existing store (checked chunk by chunk
against its checksums first) and say which extra the other commands need. Nothing here needs
torch, transformers, peft or matplotlib."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spice
from spice.features.records import data_fingerprint
from spice.pipeline import select_to_dir
from spice.store import FeatureStore, StoreError, StoreWriter

from helpers import ENV

HOME = str(Path(spice.__file__).resolve().parents[1])  # the checkout's python/ (or site-packages)

# A sitecustomize that makes the optional dependencies unimportable, as in a numpy-only install.
BLOCKER = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""
OPTIONAL = {"torch", "transformers", "peft", "matplotlib", "pyarrow", "tqdm"}


def blocked_env(tmp: Path, blocked: set[str] = OPTIONAL) -> dict[str, str]:
    """An environment whose Python cannot import ``blocked`` (and runs this checkout's spice)."""
    d = tmp / "block"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(BLOCKER.format(BLOCKED=sorted(blocked)))
    return dict(ENV, PYTHONPATH=os.pathsep.join([str(d), HOME]))


def make_store(tmp: Path, n: int = 40, d: int = 16, shard_rows: int = 16) -> tuple[Path, Path]:
    """Records and a float32 store of random rows for them, written with numpy only."""
    data = tmp / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(n))
    )
    w = StoreWriter(
        tmp / "store",
        {"data": {**data_fingerprint(data), "records": n}},
        total_rows=n,
        dim=d,
        dtype="float32",
        shard_rows=shard_rows,
    )
    w.prepare()
    rng = np.random.default_rng(0)
    for c in w.chunks:
        a, b = w.chunk_rows(c)
        w.write_chunk(
            c,
            rng.standard_normal((b - a, d)),
            [
                {"row": r, "id": str(r), "tokens": 3, "loss_tokens": 1, "loss": 1.0}
                for r in range(a, b)
            ],
        )
    w.finalize()
    return data, tmp / "store"


def flip(store: Path, row: int, col: int = 3) -> None:
    """Flip one bit of element (row, col) of the store's features.npy."""
    f = FeatureStore.open(store)
    pos = int(f.features.offset) + (row * f.dim + col) * f.features.itemsize
    raw = bytearray((store / "features.npy").read_bytes())
    raw[pos] ^= 0x01
    (store / "features.npy").write_bytes(bytes(raw))


def test_numpy_only_install_selects_and_names_the_missing_extras(tmp_path):
    data, store = make_store(tmp_path)
    (tmp_path / "d.parquet").write_bytes(b"PAR1")  # never read: pyarrow is missing
    env = blocked_env(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "spice", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    for mod in ("torch", "matplotlib", "pyarrow"):  # the blocker works
        probe = subprocess.run(
            [sys.executable, "-c", f"import {mod}"], env=env, capture_output=True
        )
        assert probe.returncode != 0, mod
    assert cli("--help").returncode == 0
    assert cli("run", "--help").returncode == 0
    r = cli(
        "select",
        "--features",
        str(store),
        "--data",
        str(data),
        "--k",
        "5",
        "--out",
        str(tmp_path / "sel"),
    )
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "sel" / "selection.json").read_text())["indices"]
    assert got == spice.select(FeatureStore.open(store), 5).indices.tolist()
    for argv, extra in [
        (["report", str(tmp_path / "sel")], "report"),
        (["features", "--model", "m", "--data", str(data), "--out", str(tmp_path / "f")], "hf"),
        (["online", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o")], "hf"),
        (["demo", "--quick", "--out", str(tmp_path / "demo")], "hf,report"),
        (["run", "--model", "m", "--data", str(data), "--out", str(tmp_path / "r")], "hf,report"),
        (
            [
                "run",
                "--model",
                "m",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--no-report",
            ],
            "hf",
        ),
        (
            [
                "select",
                "--features",
                str(store),
                "--data",
                str(tmp_path / "d.parquet"),
                "--k",
                "5",
                "--out",
                str(tmp_path / "pq"),
            ],
            "parquet",
        ),
    ]:
        r = cli(*argv)
        assert r.returncode == 1, (argv, r.stderr)
        assert f"pip install 'spice-select[{extra}]'" in r.stderr, (argv, r.stderr)
        assert r.stderr.startswith("spice: error:") and "Traceback" not in r.stderr
    for name in ("f", "o", "demo", "pq", "r"):  # nothing was started, so nothing was left
        assert not (tmp_path / name).exists(), name


def test_selection_does_not_import_torch(tmp_path):
    """versions() names torch's version from the installed metadata instead of importing it."""
    code = (
        "import sys, spice.pipeline as p; v = p.versions(); "
        "assert 'torch' not in sys.modules, 'torch imported'; print(v.get('torch'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(ENV, PYTHONPATH=HOME),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("row", [0, 15, 16, 31, 32, 39])
@pytest.mark.parametrize("threads", [1, 3])
def test_verify_names_the_damaged_chunk_and_rows(tmp_path, row, threads):
    _, store = make_store(tmp_path)  # chunks of 16 rows: 0-15, 16-31, 32-39
    FeatureStore.open(store).verify(threads=threads)
    flip(store, row)
    c = row // 16
    with pytest.raises(StoreError, match=rf"chunk {c} \(rows {16 * c} to {min(16 * c + 15, 39)}\)"):
        FeatureStore.open(store).verify(threads=threads)


def test_verify_hashes_exactly_the_chunk_bytes(tmp_path):
    """Oracle: each chunk's sha256 over features.npy's bytes, computed here independently."""
    _, store = make_store(tmp_path, n=50, d=7, shard_rows=9)
    f = FeatureStore.open(store)
    raw = (store / "features.npy").read_bytes()[int(f.features.offset) :]
    row = 7 * 4
    for ch in f.manifest["chunks"]:
        a, m = ch["offset"], ch["rows"]
        assert hashlib.sha256(raw[a * row : (a + m) * row]).hexdigest() == ch["sha256"]
    f.verify()
    # an array held in memory (no file behind it) is checked the same way
    mem = FeatureStore(f.path, f.manifest, np.array(f.features))
    mem.verify()
    mem.features[45, 2] += 1
    with pytest.raises(StoreError, match=r"chunk 5 \(rows 45 to 49\)"):
        mem.verify()


def test_verify_refuses_a_manifest_that_leaves_rows_unchecked(tmp_path):
    _, store = make_store(tmp_path)
    man = json.loads((store / "manifest.json").read_text())
    man["chunks"] = man["chunks"][:-1]  # the last 8 rows would go unchecked
    (store / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="do not cover its 40 rows exactly"):
        FeatureStore.open(store).verify()
    man["chunks"] = []
    (store / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(StoreError, match="do not cover"):
        FeatureStore.open(store).verify()


def test_select_to_dir_verifies_unless_told_not_to(tmp_path):
    data, store = make_store(tmp_path)
    flip(store, 20)
    out = tmp_path / "a" / "b" / "sel"
    with pytest.raises(StoreError, match=r"chunk 1 \(rows 16 to 31\)"):
        select_to_dir(FeatureStore.open(store), data, out, 5)
    assert not (tmp_path / "a").exists()
    sel = select_to_dir(FeatureStore.open(store), data, out, 5, verify=False)
    assert len(sel) == 5 and (out / "selection.json").is_file()


def test_failed_selection_leaves_nothing_and_keeps_what_was_there(tmp_path, monkeypatch):
    from spice import pipeline

    data, store = make_store(tmp_path)
    out = tmp_path / "x" / "y" / "z"
    with pytest.raises(ValueError):
        select_to_dir(FeatureStore.open(store), data, out, 500)  # more picks than rows
    assert not (tmp_path / "x").exists()
    write = pipeline.write_scores

    def half_written(path, *args, **kw):  # the disk fills up halfway through the outputs
        write(path, *args, **kw)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_scores", half_written)
    with pytest.raises(OSError, match="No space"):
        select_to_dir(FeatureStore.open(store), data, out, 5)
    assert not (tmp_path / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for k in (500, 5):
        with pytest.raises((ValueError, OSError)):
            select_to_dir(FeatureStore.open(store), data, mine, k)
        assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name] == []


def test_overwrite_replaces_the_previous_run_and_nothing_else(tmp_path):
    data, store = make_store(tmp_path)
    out = tmp_path / "run"
    select_to_dir(FeatureStore.open(store), data, out, 5)
    (out / "report.md").write_text("a report of the previous selection")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="--overwrite"):
        select_to_dir(FeatureStore.open(store), data, out, 7)
    sel = select_to_dir(FeatureStore.open(store), data, out, 7, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "axolotl_dataset.yaml",
        "dataset_info.json",
        "indices.npy",
        "notes.txt",
        "scores.csv",
        "selection.json",
        "subset.jsonl",
        "timing.json",
        "trl_sft.py",
    ]
    assert json.loads((out / "selection.json").read_text())["indices"] == sel.indices.tolist()
    assert len((out / "subset.jsonl").read_text().splitlines()) == 7
    shutil.rmtree(out)


def test_require_extras_names_what_is_missing(monkeypatch):
    from spice import pipeline

    monkeypatch.setattr(
        pipeline, "EXTRAS", {"hf": ("numpy", "no_such_module_q7"), "report": ("no_such_module_r8",)}
    )
    pipeline.require_extras("x", "hf", unused=("no_such_module_q7",))
    with pytest.raises(
        ModuleNotFoundError,
        match=r"x needs no_such_module_q7, which is not "
        r"installed: pip install 'spice-select\[hf\]'",
    ):
        pipeline.require_extras("x", "hf")
    with pytest.raises(
        ModuleNotFoundError,
        match=r"q7, no_such_module_r8, which are not .*"
        r"\[hf,report\]'",
    ):
        pipeline.require_extras("x", "hf", "report")


def test_spice_features_imports_without_torch(tmp_path):
    code = (
        "import sys, spice.features as f; f.load_records; f.FeatureStore; "
        "assert 'torch' not in sys.modules\n"
        "try:\n    f.extract\nexcept ModuleNotFoundError as e:\n    print(e)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env=blocked_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "spice.features.extract needs torch" in r.stdout
    assert "pip install 'spice-select[hf]'" in r.stdout
