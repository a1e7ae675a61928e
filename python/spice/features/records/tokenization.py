"""Turning a :class:`Record` into token ids and a loss mask: the chat template (or a plain
layout), response spans, and truncation that keeps the response."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .parsing import Record, _blank


@dataclass
class TokenizedRecord:
    """Token ids and loss mask of one record (after truncation).

    Attributes:
        input_ids: int64 (T,) token ids (T = 0 for a skipped record).
        loss_mask: bool (T,); True at positions whose token is a loss target (predicted from the
            previous position). Position 0 is never a target.
        truncated: the sequence was cut to ``max_length``.
        flags: what happened to the record: ``"truncated"`` with ``"turns_dropped"``,
            ``"prompt_truncated"`` and/or ``"response_truncated"``; ``"skipped"`` plus the reason
            (see :class:`Record`, and ``"template_error"`` when the chat template refused it).
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: bool = False
    flags: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())

    @property
    def skipped(self) -> bool:
        """True when the record gets no features (no tokens to learn from)."""
        return "skipped" in self.flags


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_chat(messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]], int | None]:
    """Fallback chat layout ``role:\\ncontent\\n``; spans are assistant contents + newline.
    Also returns where the first user message's content starts."""
    text = ""
    spans = []
    u0 = None
    for m in messages:
        head = f"{m['role']}:\n"
        text += head
        start = len(text)
        if u0 is None and m["role"] == "user":
            u0 = start
        text += m["content"] + "\n"
        if m["role"] == "assistant":
            spans.append((start, len(text)))
    return text, spans, u0


_MARK = "\u2063spice-first-user-turn\u2063"


def _apply_template(tokenizer: Any, msgs: list[dict], **kw: Any) -> str:
    return tokenizer.apply_chat_template(msgs, tokenize=False, **kw)


def _template_chat(
    tokenizer: Any, messages: Sequence[dict]
) -> tuple[str, list[tuple[int, int]], int | None]:
    """Render with the chat template; the span of assistant turn i is the text that rendering
    ``messages[:i+1]`` adds to rendering ``messages[:i]`` with the generation prompt. Also returns
    where the first user message's content starts (None when it cannot be located)."""
    msgs = [dict(m) for m in messages]
    full = _apply_template(tokenizer, msgs)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i == 0:
            continue
        before = _apply_template(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = _apply_template(tokenizer, msgs[: i + 1])
        if full.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
        else:  # template is not prefix-stable: locate the content after the previous span
            lo = spans[-1][1] if spans else 0
            k = full.find(m["content"], lo) if m["content"] else -1
            if k >= 0:
                spans.append((k, k + len(m["content"])))
    # where the first user message's words start: render once with a marker in their place
    # (only the text after the marker depends on them)
    first = next((i for i, m in enumerate(msgs) if m["role"] == "user"), None)
    u0 = None
    if first is not None:
        probe = [dict(m) for m in msgs[: first + 1]]
        probe[first]["content"] = _MARK
        k = _apply_template(tokenizer, probe).find(_MARK)
        if k >= 0 and full.startswith(_apply_template(tokenizer, probe)[:k]):
            u0 = k
    return full, spans, u0


def _render(tokenizer: Any, record: Record, messages: Sequence[dict] | None = None):
    """(text, response spans, start of the prompt's text or None, add special tokens?)."""
    if record.kind == "chat":
        msgs = record.messages if messages is None else messages
        if _has_chat_template(tokenizer):
            text, spans, u0 = _template_chat(tokenizer, msgs)
            return text, spans, u0, False
        text, spans, u0 = _plain_chat(msgs)
        return text, spans, u0, True
    text = record.prompt + record.response
    spans = [(len(record.prompt), len(text))] if record.response else []
    return text, spans, 0, True


def _render_text(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, bool]:
    """A conversation's text alone (no spans): what a length check needs."""
    if _has_chat_template(tokenizer):
        return _apply_template(tokenizer, [dict(m) for m in messages]), False
    return _plain_chat(messages)[0], True


def _exchanges(messages: Sequence[dict]) -> tuple[int, list[int]]:
    """(number of leading system messages, start index of every exchange): an exchange starts at
    a user turn that does not follow another user turn."""
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    starts = [
        i for i in range(head, len(messages))
        if messages[i]["role"] == "user" and (i == head or messages[i - 1]["role"] != "user")
    ]  # fmt: skip
    return head, starts


def _count_tokens(tokenizer: Any, text: str, special: bool) -> int:
    return len(tokenizer(text, add_special_tokens=special)["input_ids"])


def _drop_exchanges(
    tokenizer: Any, record: Record, max_length: int
) -> tuple[tuple[dict, ...], int]:
    """Keep the last exchanges of a long conversation: drop the fewest leading exchanges (the
    system messages stay) so that it fits in ``max_length`` tokens, never the last one that has a
    non-empty reply. Called only for a conversation that does not fit whole. Returns (messages
    kept, exchanges dropped)."""
    msgs = record.messages
    head, starts = _exchanges(msgs)
    has_reply = [
        any(m["role"] == "assistant" and not _blank(m["content"])
            for m in msgs[s : (starts[j + 1] if j + 1 < len(starts) else len(msgs))])
        for j, s in enumerate(starts)
    ]  # fmt: skip
    last = max((j for j, ok in enumerate(has_reply) if ok), default=0)

    def kept(e: int) -> tuple[dict, ...]:
        return msgs[:head] + msgs[starts[e] :] if starts else msgs

    def fits(e: int) -> bool:
        text, special = _render_text(tokenizer, kept(e))
        return _count_tokens(tokenizer, text, special) + 1 <= max_length  # + a possible EOS

    lo, hi = 1, last  # the smallest e in [lo, hi] that fits, else `last` (e = 0 does not fit)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return kept(hi), hi


def tokenize_record(
    record: Record,
    tokenizer: Any,
    *,
    max_length: int = 512,
    loss_on: str = "response",
    add_eos: bool = True,
) -> TokenizedRecord:
    """Token ids and loss mask of one record.

    Text records are tokenised as ``prompt + response`` (with the tokenizer's special tokens, e.g.
    BOS) plus EOS as a response token; chat records through the chat template. A token is a
    response token when its characters overlap an assistant/response span. ``loss_on="all"`` puts
    every position but the first in the loss.

    Sequences longer than ``max_length`` tokens keep their response: a conversation first loses
    whole leading exchanges (flag ``"turns_dropped"``), then the prompt is cut from the left
    (after any leading special tokens or template header) down to ``max_length // 4`` tokens
    (``"prompt_truncated"``), and only then is the end cut (``"response_truncated"``). A skipped
    record, a record the chat template refuses, and one left with no loss token come back with
    the flags ``"skipped"`` and the reason (``input_ids`` empty for the first two).
    """
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    notes = list(record.notes)
    if record.skipped:
        return _skipped_tokens(["skipped", record.skip, *notes], record.detail)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    try:
        text, spans, u0, special = _render(tokenizer, record)
    except Exception as e:  # a template may refuse some role orders (raise_exception in Jinja)
        return _template_refused(e, notes)
    ids, is_resp, starts = _tokenize_with_spans(tokenizer, text, spans, special, u0)
    dropped = 0
    if record.kind == "chat" and len(ids) + 1 > max_length:  # + a possible EOS
        try:
            msgs, dropped = _drop_exchanges(tokenizer, record, max_length)
            if dropped:
                text, spans, u0, special = _render(tokenizer, record, msgs)
        except Exception as e:
            return _template_refused(e, notes)
        if dropped:
            ids, is_resp, starts = _tokenize_with_spans(tokenizer, text, spans, special, u0)
    if record.kind == "chat":
        append_eos = add_eos and not _has_chat_template(tokenizer) and bool(spans)
    else:
        append_eos = add_eos and bool(record.response)
    if append_eos and eos_id is not None and (not ids or ids[-1] != eos_id):
        ids.append(int(eos_id))
        is_resp.append(True)
        starts.append(-1)
    flags = notes + (["turns_dropped"] if dropped else [])
    over = len(ids) - max_length
    if over > 0:
        flags.append("truncated")
        r0 = next((i for i, f in enumerate(is_resp) if f), len(ids))
        lo = 0 if u0 is None else u0
        p0 = next((i for i, s in enumerate(starts) if s >= lo), r0)
        p0 = min(p0, r0)
        cut = max(0, min(over, r0 - p0 - min(r0 - p0, max_length // 4)))
        if cut:
            del ids[p0 : p0 + cut], is_resp[p0 : p0 + cut]
            flags.append("prompt_truncated")
        if len(ids) > max_length:
            gone = is_resp[max_length:]
            ids, is_resp = ids[:max_length], is_resp[:max_length]
            flags.append("response_truncated" if any(gone) else "prompt_truncated")
    input_ids = np.asarray(ids, dtype=np.int64)
    resp = np.asarray(is_resp, dtype=bool)
    mask = resp.copy() if loss_on == "response" else np.ones(len(input_ids), dtype=bool)
    if len(mask):
        mask[0] = False
    if dropped:  # a dropped exchange counts as truncation too
        flags.append("truncated")
    flags = sorted(set(flags), key=flags.index)
    if not mask.any():
        flags += ["skipped", "empty_response"]
    return TokenizedRecord(
        input_ids=input_ids, loss_mask=mask, truncated="truncated" in flags, flags=flags
    )


def _template_refused(e: Exception, notes: list[str]) -> TokenizedRecord:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return _skipped_tokens(
        ["skipped", "template_error", *notes], f"the chat template refused the conversation: {msg}"
    )


def _skipped_tokens(flags: list[str], detail: str) -> TokenizedRecord:
    return TokenizedRecord(
        input_ids=np.zeros(0, dtype=np.int64),
        loss_mask=np.zeros(0, bool),
        flags=flags,
        detail=detail,
    )


def _tokenize_with_spans(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], special: bool, u0: int | None
) -> tuple[list[int], list[bool], list[int]]:
    """(ids, is-response flag per token, start character per token or -1 for special tokens)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        flags = []
        starts = []
        for a, b in enc["offset_mapping"]:
            flags.append(b > a and any(a < e and b > s for s, e in spans))
            starts.append(a if b > a else -1)
        return ids, flags, starts
    # slow tokenizer: tokenise the pieces between span boundaries separately
    cuts = sorted({0, len(text), *(x for s in spans for x in s), *(() if u0 is None else (u0,))})
    ids: list[int] = []
    flags: list[bool] = []
    starts: list[int] = []
    if special and getattr(tokenizer, "bos_token_id", None) is not None:
        probe = tokenizer("", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            ids.append(tokenizer.bos_token_id)
            flags.append(False)
            starts.append(-1)
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a == b:
            continue
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        r = any(s <= a and b <= e for s, e in spans)
        ids.extend(piece)
        flags.extend([r] * len(piece))
        starts.extend([a] * len(piece))
    return ids, flags, starts
