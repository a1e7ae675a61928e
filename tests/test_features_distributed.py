"""Ranks of a process group (2 CPU processes, gloo) write their rows straight into one store: the
same bytes as one process, no merge copy, each rank resumes its own rows after a kill, and bad
setups fail on every rank with a clear error. Without a process group, shard=(i, N) still writes
part stores that merge_stores joins."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spice.features.chunks as ex  # the chunk runner: tests replace its batch_features
from spice.features import LoraSpec, extract, merge_stores
from spice.store import FeatureStore, StoreIncompleteError

from helpers import store_files

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

KW = {"dim": 80, "lora": LoraSpec(r=4, init="random"), "batch_size": 4, "chunk_rows": 3,
      "progress": False}  # fmt: skip
# batches of 2 rows whatever their length, and a checkpoint after every batch: the row counts of
# the kill test rely on it. 14 rows, chunks of 3: rank 0 has chunks 0, 2, 4; rank 1 has 1 and 3.
KILL_KW = {**KW, "batch_size": 2, "max_batch_tokens": None, "checkpoint_seconds": 1e-9}
FILES = ("features.npy", "index.jsonl", "skipped.jsonl", "manifest.json")

PRELUDE = """
import os, sys, json
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch, torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer
import spice.store, spice.features.chunks as ex
from spice.features import LoraSpec, extract
rank = int(os.environ["RANK"])
model_dir = sys.argv[1]
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
kw = dict(dim=80, lora=LoraSpec(r=4, init="random"), batch_size=4, chunk_rows=3, progress=False)
"""

# one store written in place by both ranks: no part stores, no merge, no copy of the rows
WORKER = (
    PRELUDE
    + """
def no_copy(*a, **k):
    raise AssertionError("rows were copied")
ex.merge_stores = spice.store.merge_stores = spice.store.writer._write_final = no_copy
data, out_explicit, out_auto = sys.argv[2:5]
dist.init_process_group("gloo")
store = extract(model, tok, data, out_explicit, shard=(dist.get_rank(), 2), **kw)
print("ROWS", len(store), flush=True)
store = extract(model, tok, data, out_auto, shard="auto", **kw)
print("AUTO", len(store), flush=True)
dist.barrier()
dist.destroy_process_group()
"""
)

# shard="auto" under torchrun's environment without a process group: extract starts one. The
# rows each batch computes are counted; with "kill", rank 1 kills itself (SIGKILL) in its 4th batch
KILL_WORKER = (
    PRELUDE
    + """
import signal
data, out, mode, counts = sys.argv[2:6]
real, calls = ex.batch_features, [0]
def counted(run, collector, ids, *a, **k):
    calls[0] += 1
    if mode == "kill" and rank == 1 and calls[0] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    with open(counts, "a") as f:
        f.write(f"{rank} {ids.shape[0]}\\n")
    return real(run, collector, ids, *a, **k)
ex.batch_features = counted
kw.update(batch_size=2, max_batch_tokens=None, checkpoint_seconds=1e-9)
store = extract(model, tok, data, out, **kw)
print("ROWS", len(store), flush=True)
"""
)

# bad setups: every rank must raise the same clear error (and none may hang); a finished store
# is returned on every rank without computing anything
BAD_WORKER = (
    PRELUDE
    + """
data, one, four, done, unfinished = sys.argv[2:7]
dist.init_process_group("gloo")
pre = sys.argv[7]
cases = {  # case: (data, out, options)
    "rows": (one, pre + "rows", kw), "chunks": (four, pre + "chunks", {**kw, "chunk_rows": 4}),
    "store": (data, done, {**kw, "dim": 64}), "ranks": (data, pre + "ranks", {**kw, "seed": rank}),
    "single": (data, unfinished, kw), "reuse": (data, done, kw),  # finished: returned as is
}
def boom(*a, **k):
    raise AssertionError("no case computes a row")
ex.batch_features = boom
for case, (src, out, args) in cases.items():
    try:
        extract(model, tok, src, out, **args)
        print("NOERROR", case, flush=True)
    except Exception as e:
        print("ERR", case, type(e).__name__, str(e).replace("\\n", " | "), flush=True)
dist.destroy_process_group()
"""
)


def assert_same_store(got: Path, want: Path) -> None:
    """Chunk by chunk (rows and the manifest's checksums), then every file byte for byte."""
    a, b = FeatureStore.open(got, verify=True), FeatureStore.open(want)
    assert a.manifest["chunks"] == b.manifest["chunks"]
    for ch in b.manifest["chunks"]:
        s = slice(ch["offset"], ch["offset"] + ch["rows"])
        assert np.asarray(a.features[s]).tobytes() == np.asarray(b.features[s]).tobytes()
    assert store_files(got, FILES) == store_files(want, FILES)
    assert not (got / "shards").exists() and not (got / "parts").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    import spice  # the package under test, wherever it is installed (site-packages or python/)

    src = str(Path(spice.__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    }  # fmt: skip


def _launch(script: Path, args: list[str], world: int = 2, ok: bool = True) -> list[tuple]:
    """Run ``script`` as ranks 0..world-1 (torchrun's environment variables); (returncode,
    output) per rank."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **_env(),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
        }  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, str(script), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )  # fmt: skip
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=180)
            assert not ok or p.returncode == 0, out[-3000:]
            outs.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def _counts(path: Path) -> dict[int, int]:
    """Rows computed per rank, from the lines the kill worker appends."""
    rows = {0: 0, 1: 0}
    if path.exists():
        for line in path.read_text().split("\n"):
            if line:
                r, n = map(int, line.split())
                rows[r] += n
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory, saved_model_dir, record_factory, torch_one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("dist")
    data = d / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in record_factory(14, seed=7)))
    model = AutoModelForCausalLM.from_pretrained(saved_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(saved_model_dir)
    single = extract(model, tok, data, d / "single", **KW)  # one thread, like the workers
    for name, text in (("worker.py", WORKER), ("kill.py", KILL_WORKER), ("bad.py", BAD_WORKER)):
        (d / name).write_text(text)
    return d, data, single, model, tok


@pytest.mark.slow
def test_two_gloo_ranks_write_one_store_equal_one_process(setup, saved_model_dir):
    d, data, single, _, _ = setup
    logs = _launch(d / "worker.py", [str(saved_model_dir), str(data), str(d / "sharded"),
                                     str(d / "auto")])  # fmt: skip
    # shard=(rank, 2) or "auto" inside a group of 2: both ranks write into out itself
    assert all("ROWS 14" in log and "AUTO 14" in log for _, log in logs)
    for out in (d / "sharded", d / "auto"):
        assert_same_store(out, single.path)


def test_torchrun_cli_writes_one_store_equal_one_process(setup, saved_model_dir):
    d, data, _, model, tok = setup
    # the CLI's LoRA adapter is peft's default (B = 0); its single-process twin, in process
    want = extract(model, tok, data, d / "cli-single", **{**KW, "lora": LoraSpec(r=4)})
    out = d / "cli-torchrun"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "spice", "features", "--model", str(saved_model_dir), "--data", str(data),
        "--out", str(out), "--dim", "80", "--lora-r", "4", "--batch-size", "4",
        "--chunk-rows", "3", "--quiet",
    ]  # fmt: skip
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("spice: wrote FeatureStore") == 2  # every rank returns the store
    assert_same_store(out, want.path)


@pytest.mark.slow
def test_a_killed_rank_resumes_its_own_rows(setup, saved_model_dir, tmp_path):
    d, data, _, model, tok = setup
    want = extract(model, tok, data, tmp_path / "single", **KILL_KW)
    out, counts = tmp_path / "s", tmp_path / "counts-1"
    args = [str(saved_model_dir), str(data), str(out)]
    logs = _launch(d / "kill.py", [*args, "kill", str(counts)], ok=False)
    # rank 1 died in the 2nd batch of its chunk 3; rank 0 finished its chunks, then stopped
    # with a clear error instead of waiting for rank 1 forever
    assert logs[1][0] == -9
    assert logs[0][0] == 1 and "StoreIncompleteError" in logs[0][1]
    assert "another rank stopped" in logs[0][1] and "resume" in logs[0][1]
    assert _counts(counts) == {0: 3 + 3 + 2, 1: 3 + 2}
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == sorted([f"chunk-0000{c}.json" for c in (0, 1, 2, 4)] + [
        "chunk-00003.partial.json", "chunk-00003.partial.npy",
    ])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["status"], manifest["layout"], manifest["ranks"]) == ("in_progress",
                                                                          "shared", 2)  # fmt: skip
    assert (out / "features.npy").stat().st_size == (want.path / "features.npy").stat().st_size
    with pytest.raises(StoreIncompleteError):
        FeatureStore.open(out)

    # one process may finish what the ranks started (the chunks do not depend on who runs them)
    alone = tmp_path / "alone"
    shutil.copytree(out, alone)
    calls = {"rows": 0}
    real = ex.batch_features

    def counted(run, collector, ids, *a, **k):
        calls["rows"] += ids.shape[0]
        return real(run, collector, ids, *a, **k)

    ex.batch_features = counted
    try:
        assert_same_store(extract(model, tok, data, alone, **KILL_KW).path, want.path)
    finally:
        ex.batch_features = real
    assert calls["rows"] == 1  # the last row of chunk 3: nothing else is computed again

    # the same two ranks again: rank 0 has nothing left, rank 1 computes that one row
    counts = tmp_path / "counts-2"
    logs = _launch(d / "kill.py", [*args, "resume", str(counts)])
    assert all("ROWS 14" in log for _, log in logs)
    assert _counts(counts) == {0: 0, 1: 1}
    assert_same_store(out, want.path)


@pytest.mark.slow
def test_bad_setups_fail_on_every_rank(setup, saved_model_dir, tmp_path, record_factory,
                                       monkeypatch):  # fmt: skip
    d, data, single, model, tok = setup
    one, four = tmp_path / "one.jsonl", tmp_path / "four.jsonl"
    one.write_text(json.dumps(record_factory(1, seed=3)[0]) + "\n")
    four.write_text("".join(json.dumps(r) + "\n" for r in record_factory(4, seed=3)))
    unfinished = tmp_path / "unfinished"  # a single-process run that crashed in its 2nd batch
    real, calls = ex.batch_features, [0]

    def crash(*a, **k):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(ex, "batch_features", crash)
    with pytest.raises(RuntimeError, match="simulated"):
        extract(model, tok, data, unfinished, **KW)
    before = store_files(single.path, FILES)
    args = [str(saved_model_dir), str(data), str(one), str(four), str(single.path),
            str(unfinished), str(tmp_path / "out-")]  # fmt: skip
    logs = _launch(d / "bad.py", args)
    want = {
        "rows": ("ValueError", "2 ranks for 1 record(s)"),
        "chunks": ("ValueError", "make only 1 chunk(s) of chunk_rows=4"),
        "store": ("StoreMismatchError", "config.projection"),
        "ranks": ("StoreMismatchError", "were given different extractions"),
        "single": ("StoreMismatchError", "unfinished single-process run"),
    }
    for rank, (_, log) in enumerate(logs):
        errs = {ln.split()[1]: ln.split(" ", 3)[2:] for ln in log.splitlines()
                if ln.startswith("ERR ")}  # fmt: skip
        assert "NOERROR reuse" in log and "NOERROR" not in log.replace("NOERROR reuse", "")
        for case, (cls, text) in want.items():
            assert errs[case][0] == cls and text in errs[case][1], (rank, case, errs[case])
    assert store_files(single.path, FILES) == before  # a mismatched store is left alone
    assert not (tmp_path / "out-rows").exists() and not (tmp_path / "out-chunks").exists()


def test_parts_without_process_group_and_merge(setup):
    d, data, single, model, tok = setup
    # without a process group, each call writes its part; merge_stores joins them
    parts = [extract(model, tok, data, d / "manual", shard=(i, 2), **KW) for i in range(2)]
    assert [len(p) for p in parts] == [8, 6]  # chunks of 3 rows: 0, 2, 4 | 1, 3
    merged = merge_stores(d / "manual")
    assert store_files(merged.path, FILES) == store_files(single.path, FILES)


def test_device_cuda_without_a_gpu_is_a_clear_error(setup, saved_model_dir, capsys):
    import torch

    from spice.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    d, data, _, _, _ = setup
    argv = ["features", "--model", str(saved_model_dir), "--data", str(data),
            "--out", str(d / "never"), "--device", "cuda", "--quiet"]  # fmt: skip
    assert main(argv) == 1
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err
    assert not (d / "never").exists()
