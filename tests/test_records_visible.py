"""Replies with no visible content are empty replies: a zero-width space, a lone punctuation mark,
format and control characters. They are skipped like whitespace (``empty_response``), in plain
prompt/response records and in conversations, and counted in the store's skipped rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spice.features import LoraSpec, extract, load_records
from spice.features.records import data_fingerprint, parse_record

pytest_plugins = ["features_fixtures"]

# Unicode categories that carry no content on their own (letters L*, numbers N* and emoji do).
INVISIBLE_CATEGORIES = [
    "Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Mn", "Me",
    "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk",
]  # fmt: skip
HANGUL_FILLERS = ["\u115f", "\u1160", "\u3164", "\uffa0"]
INVISIBLE = st.text(
    alphabet=st.one_of(
        st.characters(categories=INVISIBLE_CATEGORIES),
        st.sampled_from(HANGUL_FILLERS + ["\u2800", "\u00a9", "\u00b0"]),  # braille blank, ©, °
    ),
    max_size=12,
)
# one character each of content: digit, Latin letter (composed and decomposed), emoji, CJK,
# Cyrillic, Arabic-Indic digit, a vulgar fraction, a skin-toned emoji, a Devanagari letter
VISIBLE = ["4", "é", "e\u0301", "\U0001f600", "中", "ж", "\u0663", "\u00bd", "👍🏽", "क", "x"]

EMPTY_LITERALS = [
    "",
    " \n\t",
    "\u200b",  # zero-width space (ShareGPT row udDhJQO_0)
    "\u200b\u00a0",  # zero-width space, no-break space
    "\ufeff",  # byte order mark
    "\u2060\u200d\u200c",  # word joiner, zero-width joiner, zero-width non-joiner
    "\u2028\u2029",  # line and paragraph separators
    "\x00\x07",
    "\u00ad",  # soft hyphen
    "\u3164",  # Hangul filler
    ".",
    "—",
    "...",
    "?!",
    "¯\\_(ツ)_/¯"[:2],  # "¯\": a modifier symbol and a backslash
    "***",
    "$ + =",
    "\u0301",  # a combining accent with nothing to sit on
]
CONTENT_LITERALS = [
    "4",
    "é",
    "e\u0301",
    "😀",
    "中文",
    "a",
    "👍",
    "½",
    "²",
    "no.",
    " ok ",
    "\u200bhi",
]


def _text(resp: str) -> dict:
    return {"id": "t", "prompt": "Q: ", "response": resp}


def _chat(*replies: str) -> dict:
    msgs = []
    for i, r in enumerate(replies):
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": r}]
    return {"id": "c", "messages": msgs}


def _sharegpt(reply: str) -> dict:
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": reply}]
    return {"id": "s", "conversations": turns}


@pytest.mark.parametrize("text", EMPTY_LITERALS)
def test_invisible_literals_are_empty_replies(text):
    for obj in (_text(text), _chat(text), _chat(text, "\u200b"), _sharegpt(text)):
        r = parse_record(obj, "0", "here")
        assert r.skip == "empty_response", (text, obj)
        blank = not text.strip() and "\u200b" not in json.dumps(obj, ensure_ascii=False)
        assert r.detail.endswith("is empty") == blank, r.detail
    alpaca = parse_record({"instruction": "say it", "output": text}, "0", "here")
    assert alpaca.skip == "empty_response"


@pytest.mark.parametrize("text", CONTENT_LITERALS)
def test_visible_literals_are_content(text):
    for obj in (_text(text), _chat(text), _chat("\u200b", text), _sharegpt(text)):
        r = parse_record(obj, "0", "here")
        assert not r.skipped, (text, obj, r.detail)


@settings(max_examples=200, deadline=None)
@given(text=INVISIBLE)
def test_generated_invisible_strings_are_empty(text):
    assert parse_record(_text(text), "0", "w").skip == "empty_response"
    assert parse_record(_chat(text, text[::-1]), "0", "w").skip == "empty_response"


@settings(max_examples=200, deadline=None)
@given(text=INVISIBLE, ch=st.sampled_from(VISIBLE), at=st.integers(0, 12))
def test_one_visible_character_makes_content(text, ch, at):
    reply = text[:at] + ch + text[at:]
    assert not parse_record(_text(reply), "0", "w").skipped
    # a conversation is used when any of its replies has content
    assert not parse_record(_chat(text, reply), "0", "w").skipped


# data_fingerprint of ROWS (no reply without visible content) as written by the rule before
# invisible replies were skipped: stores made then must still match
ROWS = [
    {"id": "a", "prompt": "What is 2 + 2?\n", "response": "4"},
    {"id": "b", "instruction": "Say hi", "output": "héllo 👋"},
    {
        "id": "c",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "   "}],
    },  # fmt: skip
    {
        "id": "d",
        "conversations": [
            {"from": "gpt", "value": "lead"},
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "中文"},
        ],
    },  # fmt: skip
    {"id": "e", "prompt": "p", "response": ""},
]
OLD_FINGERPRINT = "7e3ec49d966a682da101f40935839db486ef97ca8c6b0165edadac5bb1d5401b"
# the same rows plus an invisible reply, fingerprinted by the old rule (the reply was content)
OLD_FINGERPRINT_WITH_ZWSP = "57470af82260b10f92ac5d924205e3f8a40917d15e71662fc43f658357c9c29f"


def test_fingerprint_unchanged_for_data_without_invisible_replies():
    assert data_fingerprint(ROWS)["sha256"] == OLD_FINGERPRINT
    # data that has such a row now reads differently (the row is skipped), so a store made from
    # it before no longer matches: spice select refuses it and `spice features` must be rerun
    zwsp = ROWS + [{"id": "z", "prompt": "p", "response": "\u200b"}]
    assert data_fingerprint(zwsp)["sha256"] != OLD_FINGERPRINT_WITH_ZWSP


def test_invisible_replies_are_skipped_rows_of_the_store(tmp_path, tiny_llama, chat_tokenizer):
    rows = [
        {"id": "ok", "prompt": "add 1 2\n", "response": "3"},
        {"id": "zwsp", "prompt": "hello\n", "response": "\u200b"},
        {"id": "dot", "prompt": "hello\n", "response": "."},
        _sharegpt("\u200b\u00a0"),
        _chat("\u200b", "fine"),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = load_records(path)
    assert [r.skip for r in recs] == ["", "empty_response", "empty_response", "empty_response", ""]
    store = extract(
        tiny_llama, chat_tokenizer, path, tmp_path / "s", dim=16, lora=LoraSpec(r=2), progress=False
    )
    f = np.asarray(store.features)
    assert [bool(row.any()) for row in f] == [True, False, False, False, True]
    listed = [json.loads(x) for x in (store.path / "skipped.jsonl").read_text().splitlines()]
    assert [(e["row"], e["reason"]) for e in listed] == [(i, "empty_response") for i in (1, 2, 3)]
    assert "no visible content" in listed[0]["detail"]
    manifest = json.loads((store.path / "manifest.json").read_text())
    assert manifest["skipped"]["reasons"] == {"empty_response": 3}
