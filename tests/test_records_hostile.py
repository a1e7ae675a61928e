"""Hostile records: random JSON shapes, roles, unicode, empty and huge fields.

Whatever a data file holds, reading and tokenising it never crashes: every input row comes back as
a usable record or a skipped one with a named reason (``invalid="skip"``), or the strict reader
stops with a RecordError that names the file and the line of the first malformed record.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spice.features import LoraSpec, RecordError, extract, load_records, tokenize_record
from spice.store import SKIP_REASONS

pytest_plugins = ["features_fixtures"]

KEYS = [
    "id",
    "instruction",
    "input",
    "output",
    "prompt",
    "response",
    "completion",
    "messages",
    "conversations",
    "role",
    "content",
    "from",
    "value",
    "text",
    "type",
]
ROLES = [
    "user",
    "assistant",
    "system",
    "human",
    "gpt",
    "tool",
    "model",
    "chatgpt",
    "USER",
    "alien",
    "",
]
TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            " ",
            "\n\n",
            "\u200b",
            "🌍" * 10,
            "請回答",
            "مرحبا",
            "\x00",
            "{{ x }}",
            "<|im_end|>",
            "</s>",
        ]
    ),
    st.integers(1, 3000).map(lambda n: "long words " * n),  # huge fields
)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), TEXT)
ANY = st.recursive(
    SCALAR,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS), c, max_size=3),
    max_leaves=8,
)


def message(role_key: str, text_key: str):
    return st.fixed_dictionaries(
        {role_key: st.one_of(st.sampled_from(ROLES), ANY), text_key: st.one_of(TEXT, ANY)},
        optional={"extra": ANY},
    )


RECORD = st.one_of(
    ANY,
    st.fixed_dictionaries(
        {"conversations": st.lists(message("from", "value"), max_size=6)},
        optional={"id": st.one_of(st.integers(), TEXT, ANY)},
    ),
    st.fixed_dictionaries({"messages": st.lists(message("role", "content"), max_size=6)}),
    st.fixed_dictionaries(
        {"instruction": st.one_of(TEXT, ANY), "output": st.one_of(TEXT, ANY)},
        optional={"input": st.one_of(TEXT, ANY)},
    ),
    st.fixed_dictionaries({"prompt": TEXT}, optional={"response": TEXT, "completion": ANY}),
)
LINE = st.one_of(
    RECORD.map(lambda r: json.dumps(r, ensure_ascii=False)),
    st.sampled_from(['{"prompt": "a", "respo', "[1, 2", "nan", "{}", "null", '"x"']),
)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _write(tmp_path_factory, lines: list[str]):
    p = tmp_path_factory.mktemp("hostile") / "data.jsonl"
    p.write_text("".join(x + "\n" + "\n\n" * (i % 3 == 0) for i, x in enumerate(lines)), "utf-8")
    return p


@SETTINGS
@given(lines=st.lists(LINE, min_size=1, max_size=12))
def test_every_row_is_accounted_for(tmp_path_factory, chat_tokenizer, tokenizer, lines):
    path = _write(tmp_path_factory, lines)
    recs = load_records(path, invalid="skip")
    assert len(recs) == len(lines)
    for i, r in enumerate(recs):
        assert r.source == f"{path}:{_line_no(lines, i)}"
        if r.skipped:
            assert r.skip in SKIP_REASONS and r.detail
            if r.kind == "invalid":
                assert r.detail.startswith(f"{path}:{_line_no(lines, i)}:")
        else:
            assert r.kind in ("text", "chat")
    try:
        strict = load_records(path)
    except RecordError as e:
        bad = next(i for i, r in enumerate(recs) if r.kind == "invalid")
        assert str(e).startswith(f"{path}:{_line_no(lines, bad)}:")
    else:
        assert all(r.kind != "invalid" for r in recs) and strict == recs
    for tok in (chat_tokenizer, tokenizer):
        for max_length in (2, 24):
            for r in recs:
                t = tokenize_record(r, tok, max_length=max_length)
                assert len(t.input_ids) == len(t.loss_mask) <= max_length
                assert t.skipped or (t.loss_mask.any() and not t.loss_mask[0])
                if t.skipped:
                    assert any(f in SKIP_REASONS for f in t.flags)


def _line_no(lines: list[str], i: int) -> int:
    """Line number of record i in the file _write makes (a blank pair after every third)."""
    return i + 1 + 2 * ((i + 2) // 3)


def test_malformed_rows_can_be_skipped_end_to_end(tmp_path, tiny_llama, chat_tokenizer):
    lines = [
        '{"conversations": [{"from": "human", "value": "add 1 2"}, {"from": "gpt", "value": "3"}]}',
        '{"conversations": [{"from": "alien", "value": "x"}]}',
        '{"prompt": "a", "respo',
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, '
        '{"role": "assistant", "content": "yo"}]}',
        "[1, 2]",
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=r"d\.jsonl:2: conversations\[0\]: unknown speaker"):
        extract(
            tiny_llama,
            chat_tokenizer,
            path,
            tmp_path / "strict",
            dim=32,
            lora=LoraSpec(r=2),
            progress=False,
        )
    assert not (tmp_path / "strict").exists()  # refused before anything was written
    store = extract(
        tiny_llama,
        chat_tokenizer,
        path,
        tmp_path / "s",
        dim=32,
        lora=LoraSpec(r=2),
        progress=False,
        invalid="skip",
    )
    assert len(store) == 5
    f = np.asarray(store.features)
    assert [bool(row.any()) for row in f] == [True, False, False, True, False]
    listed = [json.loads(x) for x in (store.path / "skipped.jsonl").read_text().splitlines()]
    assert [e["row"] for e in listed] == [1, 2, 4]
    assert all(e["reason"] == "invalid_record" for e in listed)
    assert listed[1]["detail"].startswith(f"{path}:3: invalid JSON")
