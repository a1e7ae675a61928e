"""Two processes (gloo on CPU) with shard=(i, 2), merged, equal one process byte for byte."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from spice.features import LoraSpec, extract, merge_stores

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

KW = {"dim": 80, "lora": LoraSpec(r=4, init="random"), "batch_size": 4, "shard_rows": 3,
      "progress": False}  # fmt: skip

WORKER = """
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch, torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer
from spice.features import LoraSpec, extract
model_dir, data, out_explicit, out_auto = sys.argv[1:5]
dist.init_process_group("gloo")
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
tok = AutoTokenizer.from_pretrained(model_dir)
kw = dict(dim=80, lora=LoraSpec(r=4, init="random"), batch_size=4, shard_rows=3, progress=False)
store = extract(model, tok, data, out_explicit, shard=(dist.get_rank(), 2), **kw)
print("ROWS", len(store), flush=True)
store = extract(model, tok, data, out_auto, shard="auto", **kw)
print("AUTO", len(store), flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def files(path):
    return {n: (path / n).read_bytes() for n in ("features.npy", "index.jsonl", "manifest.json")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, args: list[str], world: int = 2) -> list[str]:
    port = _free_port()
    import spice  # the package under test, wherever it is installed (site-packages or python/)

    src = str(Path(spice.__file__).resolve().parents[1])
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1",
        }  # fmt: skip
        procs.append(
            subprocess.Popen([sys.executable, str(script), *args], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )  # fmt: skip
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, saved_model_dir, record_factory, torch_one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tmp_path_factory.mktemp("dist")
    data = d / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in record_factory(14, seed=7)))
    model = AutoModelForCausalLM.from_pretrained(saved_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(saved_model_dir)
    single = extract(model, tok, data, d / "single", **KW)  # one thread, like the workers
    script = d / "worker.py"
    script.write_text(WORKER)
    return d, data, single, script


def test_two_gloo_processes_then_merge_equal_one_process(setup, saved_model_dir):
    d, data, single, script = setup
    logs = _launch(script, [str(saved_model_dir), str(data), str(d / "sharded"), str(d / "auto")])
    # shard=(i, 2) or "auto" inside a process group: rank 0 merges the parts into out
    assert all("ROWS 14" in log and "AUTO 14" in log for log in logs)
    for out in (d / "sharded", d / "auto"):
        assert files(out) == files(single.path)
        assert not (out / "parts").exists()


def test_parts_without_process_group_and_merge(setup, saved_model_dir):
    d, data, single, _ = setup
    # without a process group, each call writes its part; merge_stores joins them
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(saved_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(saved_model_dir)
    parts = [extract(model, tok, data, d / "manual", shard=(i, 2), **KW) for i in range(2)]
    assert [len(p) for p in parts] == [8, 6]  # chunks of 3 rows: 0, 2, 4 | 1, 3
    merged = merge_stores(d / "manual")
    assert files(merged.path) == files(single.path)
