"""Record loading (JSONL, JSON, Parquet, datasets), formats, token masks, and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spice.features import RecordError, load_records, tokenize_record
from spice.features.records import ALPACA_PROMPT, data_fingerprint

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

ROWS = [
    {"instruction": "add", "input": "1 2", "output": "3"},
    {"id": 7, "prompt": "p", "completion": "c"},
    {"id": "x", "prompt": "p", "response": "r"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_formats_and_ids(tmp_path):
    recs = load_records(_jsonl(tmp_path / "d.jsonl", ROWS))
    assert [r.id for r in recs] == ["0", "7", "x", "3", "4"]
    assert recs[0].kind == "text" and recs[0].response == "3" and "Input:\n1 2" in recs[0].prompt
    assert recs[1].response == "c" and recs[2].response == "r"
    assert recs[3].kind == recs[4].kind == "chat"
    assert recs[3].messages == recs[4].messages
    assert recs[0].source.endswith("d.jsonl:1")


def test_all_file_kinds_agree(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    Dataset = pytest.importorskip("datasets").Dataset

    flat = [{"id": str(i), "prompt": f"p{i}", "response": f"r{i}"} for i in range(5)]
    a = load_records(_jsonl(tmp_path / "d.jsonl", flat))
    (tmp_path / "d.json").write_text(json.dumps(flat, indent=2))
    b = load_records(tmp_path / "d.json")
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "d.parquet")
    c = load_records(tmp_path / "d.parquet")
    d = load_records(Dataset.from_list(flat))
    e = load_records(flat)
    key = [(r.id, r.prompt, r.response) for r in a]
    for other in (b, c, d, e):
        assert [(r.id, r.prompt, r.response) for r in other] == key
    fp1 = data_fingerprint(tmp_path / "d.jsonl")
    assert fp1["kind"] == "records" and len(fp1["sha256"]) == 64
    # the fingerprint is of the content: every container of the same records agrees
    for src in (tmp_path / "d.json", tmp_path / "d.parquet", flat):
        assert data_fingerprint(src)["sha256"] == fp1["sha256"]
    assert data_fingerprint(flat)["sha256"] == data_fingerprint(e, e)["sha256"]
    changed = [dict(r) for r in flat]
    changed[3]["response"] = "r3 "
    assert data_fingerprint(changed)["sha256"] != fp1["sha256"]


@pytest.mark.parametrize(
    "line, needle",
    [
        ({"instruction": "a"}, "missing field 'output'"),
        ({"instruction": 3, "output": "x"}, "field 'instruction' must be a string, got int"),
        ({"prompt": "a"}, "no 'response' or 'completion'"),
        ({"messages": "hi"}, "field 'messages' must be a list"),
        ({"messages": [{"role": "user"}]}, "messages[0]: missing field 'content'"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown speaker 'alien'"),
        ({"text": "x"}, "unrecognised record with keys ['text']"),
        ([1, 2], "a record must be a JSON object, got list"),
        ({"id": [1], "prompt": "a", "response": "b"}, "field 'id' must be a string or integer"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, needle):
    good = {"prompt": "a", "response": "b"}
    p = _jsonl(tmp_path / "bad.jsonl", [good, good, line])
    with pytest.raises(RecordError) as e:
        load_records(p)
    assert f"{p}:3:" in str(e.value) and needle in str(e.value)


def test_bad_json_and_utf8(tmp_path):
    p = tmp_path / "broken.jsonl"
    p.write_bytes(b'{"prompt": "a", "response": "b"}\n\n{"prompt": "a", "respo\n')
    with pytest.raises(RecordError, match=r"broken.jsonl:3: invalid JSON"):
        load_records(p)
    p.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n')
    with pytest.raises(RecordError, match=r"broken.jsonl:2: not valid UTF-8 \(byte 0xff"):
        load_records(p)
    j = tmp_path / "arr.json"
    j.write_bytes(b'[\n {"prompt": "a", "response": "b"},\n {"prompt": "a"}\n]')
    with pytest.raises(RecordError, match=r"arr.json:3: record has 'prompt' but no"):
        load_records(j)
    j.write_bytes(b'[\n {"prompt": "a", "response": "b"},\n {"prompt": "\xc3\x28"}\n]')
    with pytest.raises(RecordError, match=r"arr.json:3: not valid UTF-8"):
        load_records(j)
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope.jsonl")


def test_parquet_bad_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    table = pa.Table.from_pylist([{"prompt": "a"}, {"prompt": None}])
    pq.write_table(table, tmp_path / "b.parquet")
    with pytest.raises(RecordError, match=r"b.parquet: row 0: record has 'prompt' but no"):
        load_records(tmp_path / "b.parquet")


def _decoded_response(tok, t):
    return tok.decode(t.input_ids[t.loss_mask])


def test_text_mask_covers_response_and_eos(tokenizer):
    r = load_records([{"instruction": "write a function", "output": "return the sum"}])[0]
    t = tokenize_record(r, tokenizer)
    assert tokenizer.decode(t.input_ids[:1]) == "<s>"
    assert t.input_ids[-1] == tokenizer.eos_token_id and t.loss_mask[-1]
    assert _decoded_response(tokenizer, t) == "return the sum</s>"
    prompt = tokenizer.decode(t.input_ids[~t.loss_mask], skip_special_tokens=True)
    assert prompt == ALPACA_PROMPT.format(instruction="write a function")
    a = tokenize_record(r, tokenizer, loss_on="all")
    assert a.loss_mask[1:].all() and not a.loss_mask[0]


def test_chat_template_masks_assistant_turns(chat_tokenizer):
    msgs = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "add 1 2"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "and 2 2"},
        {"role": "assistant", "content": "4"},
    ]
    t = tokenize_record(load_records([{"messages": msgs}])[0], chat_tokenizer)
    text = chat_tokenizer.decode(t.input_ids[t.loss_mask])
    assert text == "3<|im_end|>\n4<|im_end|>\n"
    no_tmpl = tokenize_record(
        load_records([{"messages": msgs}])[0],
        chat_tokenizer.__class__(
            tokenizer_object=chat_tokenizer.backend_tokenizer, eos_token="</s>", bos_token="<s>"
        ),
    )
    assert chat_tokenizer.decode(no_tmpl.input_ids[no_tmpl.loss_mask]) == "3\n4\n</s>"


def test_truncation_keeps_the_response(tokenizer):
    r = load_records([{"prompt": "step by step " * 30, "response": "done"}])[0]
    full = tokenize_record(r, tokenizer, max_length=4096)
    t = tokenize_record(r, tokenizer, max_length=20)
    assert len(t.input_ids) == 20 and t.truncated
    assert t.flags == ["truncated", "prompt_truncated"]
    # the response and EOS survive whole; the prompt lost its beginning, not its end
    assert _decoded_response(tokenizer, t) == "done</s>"
    n_resp = int(full.loss_mask.sum())
    assert (t.input_ids[-n_resp:] == full.input_ids[-n_resp:]).all()
    assert t.input_ids[0] == full.input_ids[0]  # BOS kept
    assert (t.input_ids[1:] == full.input_ids[len(full.input_ids) - 19 :]).all()
    assert isinstance(t.input_ids, np.ndarray) and t.input_ids.dtype == np.int64
