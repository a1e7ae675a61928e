"""The ``trl_sft.py`` a selection writes runs as written with the real trl: the model spice scored
with, fp32 on a CPU, ``--max-steps`` and ``--output-dir``, and the records, turns and loss mask
that spice scored (a leading assistant turn that scoring dropped is not trained on)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl", reason="trl is not installed (pip install 'spice-select[test]')")

import spice  # noqa: E402
from spice.features import LoraSpec, extract, tokenize_record  # noqa: E402
from spice.features.records import Record  # noqa: E402
from spice.outputs import trl_model, trl_snippet  # noqa: E402
from spice.pipeline import load_model, select_to_dir  # noqa: E402

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROOT = Path(__file__).resolve().parents[1]
LEAD = "zebra zebra zebra"  # a reply whose prompt is not in the record: never trained on


def _rows() -> list[dict]:
    u = lambda c: {"from": "human", "value": c}  # noqa: E731
    g = lambda c: {"from": "gpt", "value": c}  # noqa: E731
    return [
        {"id": "lead", "conversations": [g(LEAD), u("add 1 2"), g("the sum is 3")]},
        {"id": "alpaca", "instruction": "write a function", "output": "def f(): return 1"},
        {"id": "pr", "prompt": "explain why sky is blue\n", "response": "step by step reasoning"},
        {
            "id": "sys",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "translate into french"},
                {"role": "assistant", "content": "the quick fox"},
            ],
        },
        {"id": "blank", "prompt": "q\n", "response": "\u200b"},
        {"id": "multi", "conversations": [u("a"), g("b"), u("c"), g("d 4 5")]},
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, chat_tokenizer):
    """A tiny Llama saved as a model folder, its store, and a selection of every usable row."""
    from features_fixtures import build_llama

    tmp = tmp_path_factory.mktemp("trl")
    model_dir = tmp / "tiny-llama"
    build_llama().save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _rows()), "utf-8")
    model, tok, _ = load_model(str(model_dir))
    store = extract(
        model, tok, data, tmp / "feats", dim=16, lora=LoraSpec(r=2), max_length=64, progress=False
    )
    select_to_dir(store, data, tmp / "sel", 5)
    return tmp, model_dir


def _constants(code: str) -> dict:
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(code).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }


def test_script_records_the_scoring_model_and_settings(run_dir):
    tmp, model_dir = run_dir
    c = _constants((tmp / "sel" / "trl_sft.py").read_text())
    assert c["MODEL"] == str(model_dir.resolve()) and c["GGUF_FILE"] is None
    assert c["MAX_LENGTH"] == 64 and c["LOSS_ON"] == "response" and c["COLUMNS"] is None
    assert c["SUBSET"] == str((tmp / "sel" / "subset.jsonl").resolve())


def test_script_trains_two_steps_with_the_real_trl(run_dir):
    tmp, _ = run_dir
    env = {
        **os.environ,
        # where this process found spice (the source tree, or an installed copy with its core)
        "PYTHONPATH": str(Path(spice.__file__).resolve().parents[1]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    out = tmp / "sft"
    argv = [sys.executable, str(tmp / "sel" / "trl_sft.py"), "--max-steps", "2"]
    argv += ["--output-dir", str(out), "--batch-size", "2"]
    proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trained on 5 records, fp32" in proc.stdout, proc.stdout[-2000:]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    # two optimizer steps moved the weights away from the model spice scored with
    from safetensors.numpy import load_file

    before = load_file(str(run_dir[1] / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before)


class _Captured(Exception):
    pass


def test_script_hands_trl_the_scored_turns_and_mask(run_dir, chat_tokenizer, monkeypatch):
    """Run the script's main in-process with SFTTrainer replaced by a recorder: the dataset it
    gets is, row for row, the tokens and loss mask of the records as spice scored them, written
    out here by hand (the leading assistant turn gone, the blank reply left out)."""
    tmp, _ = run_dir
    code = (tmp / "sel" / "trl_sft.py").read_text()
    g: dict = {"__name__": "trl_sft_under_test"}
    exec(compile(code, "trl_sft.py", "exec"), g)
    seen: dict = {}

    class Recorder:
        def __init__(self, model, args, train_dataset, processing_class):
            seen.update(args=args, dataset=train_dataset)
            raise _Captured

    g["SFTTrainer"] = Recorder
    monkeypatch.setattr(sys, "argv", ["trl_sft.py", "--output-dir", str(tmp / "unused")])
    with pytest.raises(_Captured):
        g["main"]()
    assert seen["args"].bf16 is False and seen["args"].fp16 is False  # a CPU: fp32
    picks = json.loads((tmp / "sel" / "selection.json").read_text())["indices"]
    rows = _rows()
    m = lambda r, c: {"role": r, "content": c}  # noqa: E731
    by_hand = {
        "lead": Record(
            "lead", "chat", messages=(m("user", "add 1 2"), m("assistant", "the sum is 3"))
        ),  # fmt: skip
        "alpaca": Record(
            "alpaca", "text", "Instruction:\nwrite a function\n\nResponse:\n", "def f(): return 1"
        ),
        "pr": Record("pr", "text", "explain why sky is blue\n", "step by step reasoning"),
        "sys": Record("sys", "chat", messages=tuple(rows[3]["messages"])),
        "multi": Record(
            "multi",
            "chat",
            messages=(m("user", "a"), m("assistant", "b"), m("user", "c"), m("assistant", "d 4 5")),
        ),
    }
    want = []
    for i in picks:
        rec = by_hand.get(rows[i]["id"])
        if rec is None:  # the blank reply: a zero row, never picked
            continue
        t = tokenize_record(rec, chat_tokenizer, max_length=64)
        want.append(
            {
                "input_ids": t.input_ids.tolist(),
                "labels": np.where(t.loss_mask, t.input_ids, -100).tolist(),
            }
        )
    got = seen["dataset"].to_list()
    assert got == want and len(got) == 5
    texts = [chat_tokenizer.decode(r["input_ids"]) for r in got]
    assert not any("zebra" in t for t in texts) and any("the sum is 3" in t for t in texts)


def test_model_resolution(tmp_path):
    gg = tmp_path / "smol"
    gg.mkdir()
    (gg / "SmolLM2.Q4.gguf").write_bytes(b"GGUF")
    assert trl_model({"model": {"name_or_path": str(gg)}}) == (str(gg.resolve()), "SmolLM2.Q4.gguf")
    # what `spice run` was given wins; a Hub id stays an id
    assert trl_model({}, {"model": "org/name", "gguf_file": None}) == ("org/name", None)
    ran = {"model": str(gg), "gguf_file": "x.gguf"}
    assert trl_model({"model": {"name_or_path": "other"}}, ran) == (str(gg.resolve()), "x.gguf")
    (gg / "config.json").write_text("{}")  # a model folder that has a config is not a GGUF one
    assert trl_model({"model": {"name_or_path": str(gg)}}) == (str(gg.resolve()), None)
    assert trl_model(None) == (None, None)
    ran = {"model": str(gg), "gguf_file": "a.gguf"}
    c = _constants(trl_snippet(tmp_path / "s.jsonl", {"max_length": 32}, ran))
    assert (c["MODEL"], c["GGUF_FILE"], c["MAX_LENGTH"]) == (str(gg.resolve()), "a.gguf", 32)


def test_script_without_a_recorded_model_asks_for_one(tmp_path):
    code = trl_snippet(tmp_path / "s.jsonl")
    assert _constants(code)["MODEL"] is None
    g: dict = {"__name__": "x"}
    exec(compile(code, "trl_sft.py", "exec"), g)
    old = sys.argv
    sys.argv = ["trl_sft.py"]
    try:
        with pytest.raises(SystemExit):
            g["parse_args"]()
    finally:
        sys.argv = old
