"""Crash mid-chunk then resume gives identical bytes; a mismatched store is refused."""

from __future__ import annotations

import json

import pytest

import spice.features.driver as ex
from spice.features import LoraSpec, extract
from spice.store import FeatureStore, StoreIncompleteError, StoreMismatchError

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

KW = {"dim": 96, "lora": LoraSpec(r=4), "batch_size": 3, "shard_rows": 5, "progress": False}


def files(path):
    return {n: (path / n).read_bytes() for n in ("features.npy", "index.jsonl", "manifest.json")}


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


def test_resume_after_crash_mid_chunk_is_byte_identical(
    tmp_path, monkeypatch, tiny_llama, tokenizer, data_file, reference
):
    real = ex.batch_features
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # chunks of 5, 5, 5, 2 rows: 2 + 2 batches done, crash in chunk 2
            raise Crash("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ex, "batch_features", crashing)
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
    assert files(store.path) == files(reference.path)


def test_finished_store_is_reused(monkeypatch, tiny_llama, tokenizer, data_file, reference):
    def boom(*a, **k):
        raise AssertionError("should not recompute")

    monkeypatch.setattr(ex, "batch_features", boom)
    store = extract(tiny_llama, tokenizer, data_file, reference.path, **KW)
    assert files(store.path) == files(reference.path)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"dim": 64}, "config.projection"),
        ({"seed": 3}, "config.projection.seed"),
        ({"projection": "dense"}, "config.projection.kind"),
        ({"lora": LoraSpec(r=2)}, "config.gradients.r"),
        ({"loss_on": "all"}, "config.loss_on"),
        ({"max_length": 64}, "config.max_length"),
        ({"shard_rows": 4}, "shard_rows"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_mismatched_manifest_is_refused(tiny_llama, tokenizer, data_file, reference, change, key):
    before = files(reference.path)
    with pytest.raises(StoreMismatchError, match=key.replace(".", r"\.")) as e:
        extract(tiny_llama, tokenizer, data_file, reference.path, **{**KW, **change})
    assert "refusing" in str(e.value)
    assert files(reference.path) == before


def test_other_data_or_model_is_refused(tmp_path, tiny_qwen2, tiny_llama, tokenizer, data_file,
                                        reference, record_factory):  # fmt: skip
    other = tmp_path / "train.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in record_factory(17, seed=5)))
    with pytest.raises(StoreMismatchError, match=r"config\.data\.sha256"):
        extract(tiny_llama, tokenizer, other, reference.path, **KW)
    with pytest.raises(StoreMismatchError, match=r"config\.model"):
        extract(tiny_qwen2, tokenizer, data_file, reference.path, **KW)
