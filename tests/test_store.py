"""FeatureStore / StoreWriter / merge_stores (numpy + json only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from spice.store import (
    FeatureStore,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreWriter,
    merge_stores,
)

from helpers import store_files

CONFIG = {"model": {"params_sha256": "abc"}, "projection": {"kind": "factorized", "dim": 6}}
N, D = 23, 6


def rows(n=N, d=D):
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def index_rows(a, b):
    return [
        {"row": r, "id": f"id{r}", "tokens": 10 + r, "loss_tokens": r % 3,
         "loss": None if r % 3 == 0 else 0.5 + r, "flags": ["empty_response"] if r % 3 == 0 else []}
        for r in range(a, b)
    ]  # fmt: skip


def write(path, part=(0, 1), chunks=None, config=CONFIG, dtype="float16", shard_rows=5, **kw):
    w = StoreWriter(path, config, total_rows=N, dim=D, dtype=dtype, shard_rows=shard_rows,
                    part=part, **kw)  # fmt: skip
    w.prepare()
    data = rows()
    for c in w.chunks if chunks is None else chunks:
        a, b = w.chunk_rows(c)
        w.write_chunk(c, data[a:b], index_rows(a, b))
    return w


def test_write_open_roundtrip(tmp_path):
    store = write(tmp_path / "s").finalize()
    assert isinstance(store.features, np.memmap)
    assert store.features.shape == (N, D) and store.features.dtype == np.float16
    np.testing.assert_array_equal(store.features, rows().astype(np.float16))
    assert np.shares_memory(np.asarray(store), store.features)
    assert len(store) == N and store.dim == D
    idx = store.index
    assert idx.ids[3] == "id3" and idx.tokens[4] == 14 and np.isnan(idx.loss[0])
    assert list(idx.flagged("empty_response")) == list(range(0, N, 3))
    assert store.manifest["flags"] == {"empty_response": 8}
    assert store.manifest["status"] == "complete"
    assert not (tmp_path / "s" / "shards").exists()
    store.verify()
    again = FeatureStore.open(tmp_path / "s", verify=True)
    assert again.manifest == store.manifest
    assert "FeatureStore(" in repr(store)


def test_float32(tmp_path):
    store = write(tmp_path / "s", dtype="float32").finalize()
    np.testing.assert_array_equal(store.features, rows())


def test_resume_keeps_complete_chunks_and_redoes_torn_ones(tmp_path):
    full = write(tmp_path / "full").finalize()
    write(tmp_path / "s", chunks=[0, 1, 2])
    shards = tmp_path / "s" / "shards"
    (shards / "chunk-00001.json").unlink()  # rows written, marker not: torn
    (shards / "chunk-00003.npy.tmp").write_bytes(b"partial")  # crash mid-write
    arr = np.load(shards / "chunk-00002.npy")
    arr[0, 0] += 1
    np.save(shards / "chunk-00002.npy", arr)  # rows disagree with their marker
    with pytest.raises(StoreIncompleteError, match="unfinished"):
        FeatureStore.open(tmp_path / "s")
    w2 = StoreWriter(tmp_path / "s", CONFIG, total_rows=N, dim=D, shard_rows=5)
    assert w2.prepare() is False
    assert not (shards / "chunk-00003.npy.tmp").exists()
    assert w2.completed_chunks() == {0}
    data = rows()
    for c in sorted(set(w2.chunks) - w2.completed_chunks()):
        a, b = w2.chunk_rows(c)
        w2.write_chunk(c, data[a:b], index_rows(a, b))
    w2.finalize()
    assert store_files(tmp_path / "s") == store_files(full.path)
    w3 = StoreWriter(tmp_path / "t", CONFIG, total_rows=N, dim=D, shard_rows=5)
    w3.prepare()
    with pytest.raises(StoreIncompleteError, match="not written yet"):
        w3.finalize()


def test_mismatch_is_refused_not_overwritten(tmp_path):
    write(tmp_path / "s").finalize()
    before = store_files(tmp_path / "s")
    other = {**CONFIG, "projection": {"kind": "dense", "dim": 6}}
    w = StoreWriter(tmp_path / "s", other, total_rows=N, dim=D, shard_rows=5)
    with pytest.raises(StoreMismatchError) as e:
        w.prepare()
    msg = str(e.value)
    assert "config.projection.kind" in msg and '"factorized" -> "dense"' in msg
    w = StoreWriter(tmp_path / "s", CONFIG, total_rows=N, dim=D, shard_rows=7)
    with pytest.raises(StoreMismatchError, match="shard_rows: 5 -> 7"):
        w.prepare()
    w = StoreWriter(tmp_path / "s", CONFIG, total_rows=N, dim=D, shard_rows=5, resume=False)
    with pytest.raises(StoreError, match="already exists"):
        w.prepare()
    assert StoreWriter(tmp_path / "s", CONFIG, total_rows=N, dim=D, shard_rows=5).prepare()
    assert store_files(tmp_path / "s") == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        StoreWriter(tmp_path / "junk", CONFIG, total_rows=N, dim=D).prepare()


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="missing manifest.json"):
        FeatureStore.open(tmp_path)
    store = write(tmp_path / "s").finalize()
    m = json.loads((store.path / "manifest.json").read_text())
    m["dim"] = 7
    (store.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="manifest says"):
        FeatureStore.open(store.path)


@pytest.mark.parametrize("n_parts", [2, 3])
def test_merge_parts_is_byte_identical(tmp_path, n_parts):
    single = write(tmp_path / "single").finalize()
    parts = [write(tmp_path / f"p{i}", part=(i, n_parts)).finalize() for i in range(n_parts)]
    assert sum(len(p) for p in parts) == N
    merged = merge_stores([p.path for p in reversed(parts)], tmp_path / "merged")
    assert store_files(merged.path) == store_files(single.path)
    # the layout extract() uses: out/parts/part-i-of-N, merged into out
    root = tmp_path / "root"
    for i in range(n_parts):
        write(root / "parts" / f"part-{i:04d}-of-{n_parts:04d}", part=(i, n_parts)).finalize()
    assert store_files(merge_stores(root).path) == store_files(single.path)


def test_merge_checks(tmp_path):
    p0 = write(tmp_path / "p0", part=(0, 2)).finalize()
    p1 = write(tmp_path / "p1", part=(1, 2)).finalize()
    q1 = write(tmp_path / "q1", part=(1, 2), config={**CONFIG, "seed": 1}).finalize()
    with pytest.raises(StoreError, match=r"missing parts \[1\]"):
        merge_stores([p0.path], tmp_path / "m1")
    with pytest.raises(StoreError, match="part 0 given twice"):
        merge_stores([p0.path, p0.path], tmp_path / "m2")
    with pytest.raises(StoreMismatchError, match="config.seed"):
        merge_stores([p0.path, q1.path], tmp_path / "m3")
    merge_stores([p0.path, p1.path], tmp_path / "m4")
    with pytest.raises(StoreError, match="already holds a store"):
        merge_stores([p0.path, p1.path], tmp_path / "m4")


def test_store_module_does_not_import_torch():
    code = "import sys, spice.store; assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_select_from_python_refuses_a_flipped_byte_naming_the_chunk(tmp_path, monkeypatch):
    """spice.select(store) checks the rows against the manifest's checksums first, with the
    CLI's message; verify=False skips it; a store checked once is not hashed again."""
    import spice

    write(tmp_path / "s").finalize()
    good = FeatureStore.open(tmp_path / "s")
    want = spice.select(good, 5, verify=False).indices
    path = tmp_path / "s" / "features.npy"
    raw = bytearray(path.read_bytes())
    raw[-2 * 2 * D - 1] ^= 0x04  # one bit of row N - 2, in chunk 4 (rows 20 to 22)
    path.write_bytes(bytes(raw))
    bad = FeatureStore.open(tmp_path / "s")
    msg = "is damaged: chunk 4 (rows 20 to 22) does not match its checksum"
    with pytest.raises(StoreError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        spice.select(bad, 5)
    assert len(spice.select(bad, 5, verify=False)) == 5  # the caller's choice

    raw[-2 * 2 * D - 1] ^= 0x04  # repaired
    path.write_bytes(bytes(raw))
    store = FeatureStore.open(tmp_path / "s")
    calls = []
    real = FeatureStore.verify

    def counted(self, threads=None):
        calls.append(1)
        real(self, threads)

    monkeypatch.setattr(FeatureStore, "verify", counted)
    np.testing.assert_array_equal(spice.select(store, 5).indices, want)
    spice.select(store, 3)
    assert calls == [1]  # hashed once for this opened store
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed since
    spice.select(store, 3)
    assert calls == [1, 1]
