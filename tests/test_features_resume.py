"""Crash mid-chunk then resume gives identical bytes; a mismatched store is refused."""

from __future__ import annotations

import json

import pytest

import spice.features.chunks as ex  # the chunk runner: tests replace its batch_features
from spice.features import LoraSpec, extract
from spice.store import FeatureStore, StoreIncompleteError, StoreMismatchError

from helpers import store_files

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

KW = {
    "dim": 96,
    "lora": LoraSpec(r=4),
    "batch_size": 3,
    "max_batch_tokens": None,
    "chunk_rows": 5,
    "progress": False,
}  # batches of 3 rows, whatever their length: the counts below rely on it


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, record_factory):
    p = tmp_path_factory.mktemp("data") / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in record_factory(17, seed=4)))
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama, tokenizer, data_file):
    return extract(tiny_llama, tokenizer, data_file, tmp_path_factory.mktemp("r") / "s", **KW)


class Crash(RuntimeError):
    pass


def crash_on_batch(monkeypatch, n: int) -> dict:
    """Make the n-th batch of the extraction raise Crash; returns the batch counter, which the
    test may move (far below zero: no more crashes) to count the batches of a later run."""
    real = ex.batch_features
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ex, "batch_features", crashing)
    return calls


def test_resume_after_crash_mid_chunk_is_byte_identical(
    tmp_path, monkeypatch, tiny_llama, tokenizer, data_file, reference
):
    # chunks of 5, 5, 5, 2 rows: 2 + 2 batches done, crash in chunk 2
    calls = crash_on_batch(monkeypatch, 5)
    out = tmp_path / "s"
    with pytest.raises(Crash):
        extract(tiny_llama, tokenizer, data_file, out, **KW)
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "chunk-00000.json", "chunk-00000.npy", "chunk-00001.json", "chunk-00001.npy",
    ]  # fmt: skip
    with pytest.raises(StoreIncompleteError):
        FeatureStore.open(out)
    calls["n"] = -1000  # no more crashes; count the batches of the resumed run
    store = extract(tiny_llama, tokenizer, data_file, out, **KW)
    assert calls["n"] == -1000 + 3  # only chunks 2 (2 batches) and 3 (1 batch) are computed
    assert store_files(store.path) == store_files(reference.path)


def test_finished_store_is_reused(monkeypatch, tiny_llama, tokenizer, data_file, reference):
    def boom(*a, **k):
        raise AssertionError("should not recompute")

    monkeypatch.setattr(ex, "batch_features", boom)
    store = extract(tiny_llama, tokenizer, data_file, reference.path, **KW)
    assert store_files(store.path) == store_files(reference.path)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"dim": 64}, "config.projection"),
        ({"seed": 3}, "config.projection.seed"),
        ({"projection": "dense"}, "config.projection.kind"),
        ({"lora": LoraSpec(r=2)}, "config.gradients.r"),
        ({"loss_on": "all"}, "config.loss_on"),
        ({"max_length": 64}, "config.max_length"),
        ({"chunk_rows": 4}, "shard_rows"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_mismatched_manifest_is_refused(tiny_llama, tokenizer, data_file, reference, change, key):
    before = store_files(reference.path)
    with pytest.raises(StoreMismatchError, match=key.replace(".", r"\.")) as e:
        extract(tiny_llama, tokenizer, data_file, reference.path, **{**KW, **change})
    assert "refusing" in str(e.value)
    assert store_files(reference.path) == before


def test_other_data_or_model_is_refused(tmp_path, tiny_qwen2, tiny_llama, tokenizer, data_file,
                                        reference, record_factory):  # fmt: skip
    other = tmp_path / "train.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in record_factory(17, seed=5)))
    with pytest.raises(StoreMismatchError, match=r"config\.data\.sha256"):
        extract(tiny_llama, tokenizer, other, reference.path, **KW)
    with pytest.raises(StoreMismatchError, match=r"config\.model"):
        extract(tiny_qwen2, tokenizer, data_file, reference.path, **KW)


def test_partial_chunk_progress_survives_a_crash(
    tmp_path, monkeypatch, tiny_llama, tokenizer, data_file, reference
):
    """With a checkpoint after every batch, a crash inside a chunk loses only the batch it was
    running; the resumed run computes the rest of that chunk and gives the same bytes."""
    # chunk 0: 2 batches, chunk 1: 2, chunk 2: batch 1 done, crash in its batch 2
    calls = crash_on_batch(monkeypatch, 6)
    out = tmp_path / "s"
    kw = {**KW, "checkpoint_seconds": 1e-9}
    with pytest.raises(Crash):
        extract(tiny_llama, tokenizer, data_file, out, **kw)
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert "chunk-00002.partial.json" in names and "chunk-00002.json" not in names
    assert "chunk-00000.partial.json" not in names  # a finished chunk drops its partial files
    meta = json.loads((out / "shards" / "chunk-00002.partial.json").read_text())
    assert len(meta["done"]) == 3  # batch_size 3: the first batch of chunk 2
    calls["n"] = -1000
    store = extract(tiny_llama, tokenizer, data_file, out, **kw)
    assert calls["n"] == -1000 + 2  # the rest of chunk 2 (1 batch) and chunk 3 (1 batch)
    assert store_files(store.path) == store_files(reference.path)


def test_a_damaged_partial_is_recomputed(tmp_path, monkeypatch, tiny_llama, tokenizer, data_file,
                                         reference):  # fmt: skip
    calls = crash_on_batch(monkeypatch, 2)
    out = tmp_path / "s"
    kw = {**KW, "checkpoint_seconds": 1e-9}
    with pytest.raises(Crash):
        extract(tiny_llama, tokenizer, data_file, out, **kw)
    npy = out / "shards" / "chunk-00000.partial.npy"
    raw = bytearray(npy.read_bytes())
    raw[-3] ^= 0xFF
    npy.write_bytes(bytes(raw))
    calls["n"] = -1000
    store = extract(tiny_llama, tokenizer, data_file, out, **kw)
    assert calls["n"] == -1000 + 2 + 2 + 2 + 1  # nothing trusted from the damaged partial
    assert store_files(store.path) == store_files(reference.path)


@pytest.mark.parametrize("budget", [None, 1, 7, 40])
def test_batches_respect_the_token_budget(budget):
    import random

    rng = random.Random(budget)
    lengths = [rng.randint(1, 20) for _ in range(57)]
    plan = ex._batches(lengths, 6, budget)
    assert sorted(i for b in plan for i in b) == list(range(57))
    for b in plan:
        assert len(b) <= 6
        padded = len(b) * max(lengths[i] for i in b)
        assert budget is None or len(b) == 1 or padded <= budget
