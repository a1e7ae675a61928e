"""spice.stores.open: LESS, Bergson and TRAK gradients, written here the way those tools write them,
read in place (no copies), selected from Python and through ``spice select``, and refused clearly.

The writers below follow each tool's own writer (named in python/spice/stores.py): LESS's
collect_grad_reps.py (torch.save of per-batch pieces, then their unit-row and raw merges), Bergson's
create_index (a truncated gradients.bin, info.json, a memmap filled row by row) in its four
info.json layouts, and TRAK's MmapSaver (numpy open_memmap files under <save_dir>/<model_id>/).
Where traker or bergson is installed, their own writers are checked too (skipped otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from numpy.lib.format import open_memmap

import spice
import spice.stores
from spice.cli import main as spice_main
from spice.store import StoreError
from spice.stores import ExternalStore, UnrecognizedStoreError

N, D = 40, 12


def rows(n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def mapped_from(arr: np.ndarray, path: Path) -> bool:
    """True when ``arr``'s bytes lie in a memory mapping of ``path`` (so nothing was copied)."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps (Linux)")
    addr = arr.__array_interface__["data"][0]
    target = str(Path(path).resolve())
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    return True
    return False


def write_data(path: Path, n: int = N) -> Path:
    recs = [
        {"instruction": f"question {i}", "input": "", "output": f"answer number {i}"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


# ----------------------------------------------------------------------------------------------
# writers, as the tools write


def write_less(out: Path, G: np.ndarray, dtype: str = "bfloat16", *, legacy: bool = False) -> Path:
    """LESS collect_grads: grads-<count>.pt pieces in <out>/<task>-ckpt<N>-<opt>/dim<D>/, then
    all_orig.pt (rows normalised) and all_unormalized.pt (raw), each one torch.save-d tensor."""
    torch = pytest.importorskip("torch")
    d = out / "alpaca-ckpt105-adam" / f"dim{G.shape[1]}"
    d.mkdir(parents=True)
    t = torch.from_numpy(G).to(getattr(torch, dtype))
    pieces = [t[:16], t[16:32], t[32:]]
    kw = {"_use_new_zipfile_serialization": False} if legacy else {}
    for count, piece in zip((16, 32, len(G)), pieces):
        torch.save(piece.clone(), d / f"grads-{count}.pt", **kw)
    merged = [torch.load(d / f"grads-{c}.pt") for c in (16, 32, len(G))]
    unit = torch.cat([torch.nn.functional.normalize(m, dim=1) for m in merged])
    torch.save(unit, d / "all_orig.pt", **kw)
    torch.save(torch.cat(merged), d / "all_unormalized.pt", **kw)
    return d


def write_bergson(d: Path, G: np.ndarray, layout: str = "current", dtype: str = "float16") -> Path:
    """Bergson create_index: gradients.bin truncated to size, info.json, then rows through a
    memmap. ``layout``: which writer's info.json (current, with base_dtype name; 2025-11 with a
    structured dtype and base_dtype str; 2025-07 structured dtype only; 2025-06 grad_size)."""
    if dtype == "bfloat16":
        import ml_dtypes

        dt = np.dtype(ml_dtypes.bfloat16)
    else:
        dt = np.dtype(dtype)
    n, dim = G.shape
    sizes = {"layers.0.mlp": dim - 5, "layers.0.attn": 5}
    d.mkdir(parents=True)
    with open(d / "gradients.bin", "wb") as f:
        f.truncate(n * dim * dt.itemsize)
    struct = {
        "names": list(sizes),
        "formats": [f"({s},){dt.str}" for s in sizes.values()],
        "itemsize": dt.itemsize * dim,
    }
    info: dict
    if layout == "current":
        info = {
            "attribute_tokens": False,
            "num_items": n,
            "num_grads": n,
            "grad_sizes": sizes,
            "base_dtype": dt.name,
        }
    elif layout == "structured+base":
        info = {"num_grads": n, "dtype": struct, "grad_sizes": sizes, "base_dtype": dt.str}
    elif layout == "structured":
        info = {"num_grads": n, "dtype": struct}
    else:
        assert layout == "grad_size" and dt == np.float16
        info = {"grad_size": dim, "num_grads": n}
    (d / "info.json").write_text(json.dumps(info, indent=2))
    mm = np.memmap(d / "gradients.bin", dtype=dt, mode="r+", shape=(n, dim))
    for i in range(n):  # the builder scatters batches of rows
        mm[i] = G[i].astype(dt)
    mm.flush()
    del mm
    return d


def write_trak(save_dir: Path, G: np.ndarray, model_ids=(0,), half: bool = True, done=None) -> Path:
    """TRAK MmapSaver: metadata.json, experiments.json, id_<k>.json and <k>/*.mmap (open_memmap);
    _is_featurized is made (n,) then re-made (n, 1) int32 by load_current_store, as TRAK does."""
    n, dim = G.shape
    dt = np.float16 if half else np.float32
    save_dir.mkdir(parents=True)
    (save_dir / "scores").mkdir()
    meta = {"JL dimension": dim, "JL matrix type": "rademacher", "train set size": n}
    (save_dir / "metadata.json").write_text(json.dumps(meta))
    (save_dir / "experiments.json").write_text("{}")
    for k in model_ids:
        prefix = save_dir / str(k)
        prefix.mkdir()
        ft = open_memmap(prefix / "_is_featurized.mmap", mode="w+", shape=(n,), dtype=np.int32)
        ft[:] = 0
        ft.flush()
        store = {
            "grads": open_memmap(prefix / "grads.mmap", mode="w+", shape=(n, dim), dtype=dt),
            "out_to_loss": open_memmap(
                prefix / "out_to_loss.mmap", mode="w+", shape=(n, 1), dtype=dt
            ),
            "features": open_memmap(prefix / "features.mmap", mode="w+", shape=(n, dim), dtype=dt),
            "is_featurized": open_memmap(
                prefix / "_is_featurized.mmap", mode="w+", shape=(n, 1), dtype=np.int32
            ),
        }
        inds = np.arange(n) if done is None else np.asarray(done)
        store["grads"][inds] = G[inds].astype(dt)
        store["is_featurized"][inds] = 1
        for m in store.values():
            m.flush()
        full = int(store["is_featurized"].sum() == n)
        (save_dir / f"id_{k}.json").write_text(
            json.dumps({str(k): {"is_featurized": full, "is_finalized": 0}})
        )
    return save_dir


# ----------------------------------------------------------------------------------------------
# reading in place


@pytest.mark.parametrize("layout", ["current", "structured+base", "structured", "grad_size"])
def test_bergson_layouts_read_in_place(tmp_path, layout):
    G = rows()
    d = write_bergson(tmp_path / "run", G, layout)
    store = spice.stores.open(d)
    assert isinstance(store, ExternalStore) and store.format == "bergson"
    assert isinstance(store.features, np.memmap)
    assert Path(store.features.filename) == (d / "gradients.bin").resolve()
    assert mapped_from(store.features, d / "gradients.bin")
    assert np.shares_memory(np.asarray(store), store.features)
    np.testing.assert_array_equal(store.features, G.astype(np.float16))
    assert store.features.dtype == np.float16 and store.features.shape == (N, D)
    # any file of the run opens the run
    assert spice.stores.open(d / "info.json").features.shape == (N, D)


@pytest.mark.parametrize("layout", ["current", "structured+base"])
def test_bergson_bfloat16(tmp_path, layout):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    G = rows()
    d = write_bergson(tmp_path / "run", G, layout, dtype="bfloat16")
    store = spice.stores.open(d)
    assert store.features.dtype == np.dtype(ml_dtypes.bfloat16)
    assert mapped_from(store.features, d / "gradients.bin")
    np.testing.assert_array_equal(
        store.features.astype(np.float32), G.astype(ml_dtypes.bfloat16).astype(np.float32)
    )
    ref = spice.select(G.astype(ml_dtypes.bfloat16), 5)
    np.testing.assert_array_equal(spice.select(store.features, 5).indices, ref.indices)


@pytest.mark.parametrize("half", [True, False])
def test_trak_save_dir_read_in_place(tmp_path, half):
    G = rows()
    d = write_trak(tmp_path / "trak_results", G, half=half)
    store = spice.stores.open(d)
    assert store.format == "trak" and store.metadata["model_id"] == 0
    assert isinstance(store.features, np.memmap)
    assert mapped_from(store.features, d / "0" / "grads.mmap")
    np.testing.assert_array_equal(store.features, G.astype(np.float16 if half else np.float32))
    # the model-id folder and the grads file itself open the same rows
    for p in (d / "0", d / "0" / "grads.mmap"):
        np.testing.assert_array_equal(spice.stores.open(p).features, store.features)


def test_trak_raw_memmap_without_header(tmp_path):
    """A grads.mmap with no .npy header: shape from metadata.json, dtype from the file size."""
    G = rows()
    d = write_trak(tmp_path / "t", G)
    np.asarray(G, dtype=np.float16).tofile(d / "0" / "grads.mmap")
    np.ones(N, dtype=np.int32).tofile(d / "0" / "_is_featurized.mmap")
    store = spice.stores.open(d)
    assert mapped_from(store.features, d / "0" / "grads.mmap")
    np.testing.assert_array_equal(store.features, G.astype(np.float16))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_less_pt_read_through_mmap(tmp_path, dtype):
    torch = pytest.importorskip("torch")
    G = rows()
    d = write_less(tmp_path / "grads", G, dtype)
    want = torch.from_numpy(G).to(getattr(torch, dtype))
    store = spice.stores.open(d)  # the dim folder: the raw rows by default
    assert store.format == "less" and store.metadata["normalized"] is False
    assert store.metadata["proj_dim"] == D and store.metadata["checkpoint"] == 105
    assert store.metadata["gradient"] == "adam" and store.metadata["task"] == "alpaca"
    assert mapped_from(store.features, d / "all_unormalized.pt")
    assert not store.features.flags.writeable
    got = np.asarray(store.features).astype(np.float32)  # bfloat16 through ml_dtypes
    np.testing.assert_array_equal(got, want.float().numpy())
    assert store.features.dtype.name == dtype
    # normalised rows: all_orig.pt, by name or by flag; the parent folder finds the one dim folder
    unit = spice.stores.open(d.parent, normalized=True)
    assert unit.metadata["normalized"] is True and mapped_from(unit.features, d / "all_orig.pt")
    norms = np.linalg.norm(np.asarray(unit.features, dtype=np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-2)
    assert "unit-length" in unit.note
    with pytest.raises(StoreError, match="unit-length rows, but normalized=False"):
        spice.stores.open(d / "all_orig.pt", normalized=False)
    by_file = spice.stores.open(d / "all_orig.pt")
    np.testing.assert_array_equal(
        np.asarray(by_file.features).view(np.uint8), np.asarray(unit.features).view(np.uint8)
    )


def test_less_legacy_pt_is_loaded_and_says_so(tmp_path):
    pytest.importorskip("torch")
    G = rows()
    d = write_less(tmp_path / "g", G, "float32", legacy=True)
    store = spice.stores.open(d)
    np.testing.assert_array_equal(store.features, G)
    assert "legacy format" in store.note and "a copy" in store.note


def test_spice_store_opens_as_featurestore(tmp_path):
    from spice.store import FeatureStore, StoreWriter

    w = StoreWriter(tmp_path / "s", {"projection": {"dim": D}}, total_rows=N, dim=D, shard_rows=16)
    w.prepare()
    G = rows()
    for c in w.chunks:
        a, b = w.chunk_rows(c)
        index = [
            {"row": r, "id": f"r{r}", "tokens": 3, "loss_tokens": 1, "loss": 1.0}
            for r in range(a, b)
        ]
        w.write_chunk(c, G[a:b], index)
    w.finalize()
    store = spice.stores.open(tmp_path / "s")
    assert isinstance(store, FeatureStore)
    np.testing.assert_array_equal(store.features, G.astype(np.float16))
    assert spice.stores.open(tmp_path / "s" / "manifest.json").ids[2] == "r2"
    with pytest.raises(StoreError, match="manifest"):
        spice.stores.open(tmp_path, format="spice")


# ----------------------------------------------------------------------------------------------
# selecting: Python and the command line agree


def _cli_select(store_path: Path, data: Path, out: Path, *extra: str) -> np.ndarray:
    rc = spice_main(
        ["select", "--features", str(store_path), "--data", str(data), "--out", str(out), *extra]
    )
    assert rc == 0
    return np.load(out / "indices.npy")


@pytest.mark.parametrize("fmt", ["bergson", "trak", "less"])
def test_cli_selects_what_python_selects(tmp_path, capsys, fmt):
    G = rows(seed=3)
    if fmt == "bergson":
        p = write_bergson(tmp_path / "run", G)
    elif fmt == "trak":
        p = write_trak(tmp_path / "trak", G)
    else:
        p = write_less(tmp_path / "less", G, "float16")
    data = write_data(tmp_path / "data.jsonl")
    got = _cli_select(p, data, tmp_path / "sel", "--k", "6", "--penalty", "0.2")
    err = capsys.readouterr().err
    assert "spice: note:" in err and "as many records as the store has rows" in err
    ref = spice.select(spice.stores.open(p).features, 6, conflict_penalty=0.2)
    np.testing.assert_array_equal(got, ref.indices)
    assert len(got) == 6
    body = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert body["config"]["features_config"]["format"] == fmt
    subset = (tmp_path / "sel" / "subset.jsonl").read_text().splitlines()
    assert [json.loads(s)["instruction"] for s in subset] == [f"question {i}" for i in got]


def test_cli_refuses_data_of_another_length(tmp_path, capsys):
    p = write_bergson(tmp_path / "run", rows())
    data = write_data(tmp_path / "data.jsonl", N - 1)
    rc = spice_main(
        ["select", "--features", str(p), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"has {N} rows, the data has {N - 1} records" in err
    assert not (tmp_path / "o").exists()


def test_nan_row_is_named_by_the_selector(tmp_path, capsys):
    G = rows()
    G[17, 3] = np.nan
    p = write_trak(tmp_path / "trak", G)
    data = write_data(tmp_path / "data.jsonl")
    rc = spice_main(
        ["select", "--features", str(p), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    assert rc == 1
    assert "first bad row 17" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# errors


def test_unrecognised_folder_lists_formats_and_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnrecognizedStoreError) as e:
        spice.stores.open(tmp_path)
    msg = str(e.value)
    for expected in (
        "manifest.json",
        "all_unormalized.pt",
        "gradients.bin + info.json",
        "grads.mmap",
    ):
        assert expected in msg
    assert "notes.txt" in msg
    with pytest.raises(StoreError, match="does not exist"):
        spice.stores.open(tmp_path / "nope")


def test_cli_unrecognised_folder_is_one_clear_error(tmp_path, capsys):
    data = write_data(tmp_path / "data.jsonl")
    (tmp_path / "empty").mkdir()
    rc = spice_main(
        [
            "select",
            "--features",
            str(tmp_path / "empty"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith(f"spice: error: {tmp_path / 'empty'} is not a gradient store spice reads")
    assert "bergson: gradients.bin + info.json" in err and "It holds: nothing" in err
    assert not (tmp_path / "o").exists()


def test_trak_unfeaturized_rows_are_counted(tmp_path):
    d = write_trak(tmp_path / "t", rows(), done=np.r_[0:30, 33:N])
    with pytest.raises(
        StoreError, match=r"3 of 40 rows of TRAK model id 0 are not featurized"
    ) as e:
        spice.stores.open(d)
    assert "rows 30, 31, 32" in str(e.value)


def test_trak_several_checkpoints_need_a_choice(tmp_path):
    G = rows()
    d = write_trak(tmp_path / "t", G, model_ids=(0, 1))
    with pytest.raises(StoreError, match="2 checkpoints"):
        spice.stores.open(d)
    assert spice.stores.open(d, model_id=1).metadata["model_id"] == 1
    assert spice.stores.open(d / "1").metadata["model_id"] == 1


def test_trak_shape_disagreeing_with_metadata(tmp_path):
    d = write_trak(tmp_path / "t", rows())
    meta = json.loads((d / "metadata.json").read_text())
    meta["JL dimension"] = D + 4
    (d / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"shape \(40, 12\).*JL dimension 16"):
        spice.stores.open(d)


def test_trak_deleted_grads_are_explained(tmp_path):
    d = write_trak(tmp_path / "t", rows())
    (d / "0" / "grads.mmap").unlink()
    with pytest.raises(StoreError, match="del_grads"):
        spice.stores.open(d)


def test_bergson_size_mismatch(tmp_path):
    d = write_bergson(tmp_path / "run", rows())
    info = json.loads((d / "info.json").read_text())
    info["num_grads"] = N + 1
    (d / "info.json").write_text(json.dumps(info))
    with pytest.raises(StoreError, match=r"info.json says 41 rows x 12 columns of float16"):
        spice.stores.open(d)


def test_bergson_refusals(tmp_path):
    d = write_bergson(tmp_path / "tok", rows())
    info = json.loads((d / "info.json").read_text())
    info["attribute_tokens"] = True
    (d / "info.json").write_text(json.dumps(info))
    with pytest.raises(StoreError, match="per-token"):
        spice.stores.open(d)
    part = write_bergson(tmp_path / "run.part", rows())
    with pytest.raises(StoreError, match="unfinished Bergson run"):
        spice.stores.open(part)
    sharded = tmp_path / "sharded"
    write_bergson(sharded / "shard-0", rows())
    write_bergson(sharded / "shard-1", rows())
    with pytest.raises(StoreError, match="2 Bergson shards"):
        spice.stores.open(sharded)
    assert spice.stores.open(sharded / "shard-1").features.shape == (N, D)


def test_less_errors(tmp_path):
    torch = pytest.importorskip("torch")
    d = write_less(tmp_path / "g", rows(), "float32")
    other = d.parent / "dim8"
    other.mkdir()
    torch.save(torch.zeros(N, 8), other / "all_orig.pt")
    with pytest.raises(StoreError, match="several projection sizes.*dim12, dim8"):
        spice.stores.open(d.parent)
    bad = tmp_path / "bad" / "dim7"
    bad.mkdir(parents=True)
    torch.save(torch.zeros(N, 8), bad / "all_orig.pt")
    with pytest.raises(StoreError, match="8 columns, but its folder dim7"):
        spice.stores.open(bad)
    torch.save(torch.zeros(N, 7, dtype=torch.int32), bad / "all_orig.pt")
    with pytest.raises(StoreError, match="int32 rows"):
        spice.stores.open(bad)
    torch.save(torch.zeros(N), bad / "all_orig.pt")
    with pytest.raises(StoreError, match=r"shape \(40,\)"):
        spice.stores.open(bad)
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    torch.save(torch.zeros(4, 7), pieces / "grads-160.pt")
    with pytest.raises(StoreError, match="did not finish"):
        spice.stores.open(pieces)


def test_report_reopens_the_external_store(tmp_path):
    pytest.importorskip("matplotlib")
    from spice.report import make_report

    G = rows(seed=5)
    p = write_bergson(tmp_path / "run", G)
    data = write_data(tmp_path / "data.jsonl")
    _cli_select(p, data, tmp_path / "sel", "--k", "5")
    paths = make_report(tmp_path / "sel")
    assert paths["report"].is_file()
    text = paths["report"].read_text()
    assert "Fisher greedy (λ = 0) on the same features" in text  # the store was reopened
    assert "conflict with the picks' mean" in text


# ----------------------------------------------------------------------------------------------
# the tools' own writers, where they are installed (traker, bergson; skipped otherwise)


def test_real_trak_mmapsaver(tmp_path):
    import logging

    savers = pytest.importorskip("trak.savers")
    G = rows()
    meta = {"JL dimension": D, "JL matrix type": "rademacher", "train set size": N}
    s = savers.MmapSaver(
        save_dir=tmp_path / "trak",
        metadata=meta,
        train_set_size=N,
        proj_dim=D,
        load_from_save_dir=True,
        logging_level=logging.ERROR,
        use_half_precision=True,
    )
    s.register_model_id(0, _allow_featurizing_already_registered=False)
    s.current_store["grads"][:] = G.astype(np.float16)
    s.current_store["is_featurized"][:] = 1
    s.serialize_current_model_id_metadata()
    for m in s.current_store.values():
        if m is not None:
            m.flush()
    store = spice.stores.open(tmp_path / "trak")
    assert mapped_from(store.features, tmp_path / "trak" / "0" / "grads.mmap")
    np.testing.assert_array_equal(store.features, G.astype(np.float16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_real_bergson_create_index(tmp_path, dtype):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bdata = pytest.importorskip("bergson.data")
    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    G = rows()
    mm = bdata.create_index(
        tmp_path / "run", num_grads=N, grad_sizes={"a": 5, "b": D - 5}, dtype=dt
    )
    mm[:] = G.astype(dt)
    mm.flush()
    del mm
    store = spice.stores.open(tmp_path / "run")
    ref = bdata.load_gradients(tmp_path / "run")
    assert mapped_from(store.features, tmp_path / "run" / "gradients.bin")
    np.testing.assert_array_equal(
        np.asarray(store.features).view(np.uint16), np.asarray(ref).view(np.uint16)
    )
