"""One raw record (a dict) parsed into a :class:`Record`: the accepted shapes, chat messages, and
the rules that skip a record with nothing to learn from (the visible-content rule among them).
The shapes and rules are listed in :mod:`spice.features.records`."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from ...errors import RecordError

# The authors' layout ("Instruction:\n…\n\nResponse:\n…").
ALPACA_PROMPT = "Instruction:\n{instruction}\n\nResponse:\n"
ALPACA_PROMPT_WITH_INPUT = "Instruction:\n{instruction}\n\nInput:\n{input}\n\nResponse:\n"


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
}


@dataclass(frozen=True)
class Record:
    """One training example, normalised.

    Exactly one of (``prompt``, ``response``) or ``messages`` is used: ``kind == "text"`` means the
    text ``prompt + response`` with the loss on ``response``; ``kind == "chat"`` means ``messages``
    (dicts with ``role`` and ``content``) with the loss on assistant turns; ``kind == "invalid"``
    is a malformed record read with ``invalid="skip"`` (``prompt`` then holds its raw text).
    ``skip`` is empty for a usable record, else the reason it is skipped (``detail`` says more);
    ``notes`` lists repairs made while reading (``"dropped_leading_turns"``).
    """

    id: str
    kind: str
    prompt: str = ""
    response: str = ""
    messages: tuple[dict, ...] = ()
    source: str = ""
    skip: str = ""
    detail: str = ""
    notes: tuple[str, ...] = ()

    @property
    def skipped(self) -> bool:
        """True when the record has nothing usable (``skip`` names why); it gets a zero row."""
        return bool(self.skip)


def _need_str(obj: dict, key: str, where: str, optional: bool = False) -> str | None:
    if key not in obj or obj[key] is None:
        if optional:
            return None
        raise RecordError(f"{where}: missing field {key!r}")
    v = obj[key]
    if not isinstance(v, str):
        raise RecordError(f"{where}: field {key!r} must be a string, got {type(v).__name__}")
    return v


def _content(m: dict, key: str, where: str) -> str:
    """A message's text: a string, null (no text), or a list of ``{"type": "text", "text"}``
    parts (the OpenAI layout), joined by newlines."""
    if key not in m:
        raise RecordError(f"{where}: missing field {key!r}")
    v = m[key]
    if v is None or isinstance(v, str):
        return v or ""
    if isinstance(v, list) and all(isinstance(p, dict) for p in v):
        texts = []
        for p in v:
            t = p.get("text")
            if p.get("type", "text") == "text" and isinstance(t, str):
                texts.append(t)
            elif p.get("type", "text") == "text":
                raise RecordError(f"{where}: a text part of {key!r} has no string 'text'")
        return "\n".join(texts)
    raise RecordError(
        f"{where}: field {key!r} must be a string or a list of text parts, got {type(v).__name__}"
    )


def _chat(msgs: Any, key: str, role_key: str, text_key: str, where: str) -> tuple[dict, ...]:
    if not isinstance(msgs, (list, tuple)):
        raise RecordError(f"{where}: field {key!r} must be a list, got {type(msgs).__name__}")
    out = []
    for j, m in enumerate(msgs):
        w = f"{where}: {key}[{j}]"
        if not isinstance(m, dict):
            raise RecordError(f"{w} must be an object, got {type(m).__name__}")
        role = _need_str(m, role_key, w)
        content = _content(m, text_key, w)
        if key == "conversations":
            mapped = _SHAREGPT_ROLES.get(role.lower())
            if mapped is None:
                known = sorted(_SHAREGPT_ROLES)
                raise RecordError(f"{w}: unknown speaker {role!r} (known: {known})")
            role = mapped
        out.append({"role": role, "content": content})
    return tuple(out)


# Letters that render as nothing (Hangul fillers): used to fake an "empty" message in chats.
_INVISIBLE_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")
# Blocks whose symbols (category So) are emoji or pictographs: a reply "👍" says something.
_EMOJI_BLOCKS = ((0x2600, 0x27BF), (0x2B00, 0x2BFF), (0x1F000, 0x1FAFF))


def _visible(ch: str) -> bool:
    """A character that carries content: a letter, a digit or other number, or an emoji.
    Whitespace, control and format characters (zero-width spaces, joiners, BOM), combining marks
    on their own, punctuation and other symbols do not."""
    cat = unicodedata.category(ch)
    if cat[0] == "L":
        return ch not in _INVISIBLE_LETTERS
    if cat[0] == "N":
        return True
    if cat == "So":
        o = ord(ch)
        return any(lo <= o <= hi for lo, hi in _EMOJI_BLOCKS)
    return False


def _blank(text: str) -> bool:
    """True when ``text`` has no visible content (:func:`_visible`): an empty reply."""
    if text.isascii():  # the common case, without a category look-up per character
        return not any(c.isalnum() for c in text)
    return not any(_visible(c) for c in text)


def _why_blank(text: str, subject: str) -> str:
    """The detail of an empty reply: empty, or only invisible characters / punctuation."""
    if not text.strip():
        return f"{subject} is empty"
    return f"{subject} has no visible content (only punctuation, symbols or invisible characters)"


def _check_chat(rec: Record) -> Record:
    """Apply the documented rules for conversations (:mod:`spice.features.records`): drop
    assistant turns before the first user turn; skip records with nothing to learn from."""
    msgs = rec.messages
    if not msgs:
        return replace(rec, skip="empty_conversation", detail="the conversation has no messages")
    first_user = next((i for i, m in enumerate(msgs) if m["role"] == "user"), None)
    notes = rec.notes
    if first_user is None:
        return replace(
            rec, skip="no_user_turn_before_assistant", detail="the conversation has no user turn"
        )
    lead = [i for i in range(first_user) if msgs[i]["role"] == "assistant"]
    if lead:  # a reply to a prompt that is not in the record: not a training target
        drop = set(lead)
        msgs = tuple(m for i, m in enumerate(msgs) if i not in drop)
        notes = (*notes, "dropped_leading_turns")
        first_user -= len(lead)
    replies = [m for m in msgs[first_user:] if m["role"] == "assistant"]
    if not replies:
        reason = "no_user_turn_before_assistant" if lead else "no_assistant_turn"
        return replace(
            rec,
            messages=msgs,
            notes=notes,
            skip=reason,
            detail="no assistant turn follows a user turn",
        )
    if all(_blank(m["content"]) for m in replies):
        return replace(
            rec,
            messages=msgs,
            notes=notes,
            skip="empty_response",
            detail=_why_blank("".join(m["content"] for m in replies), "every assistant turn"),
        )
    return replace(rec, messages=msgs, notes=notes)


def parse_record(obj: Any, default_id: str, where: str) -> Record:
    """Normalise one raw record (a dict) into a :class:`Record`; ``where`` names it in errors.

    Raises :class:`RecordError` for a malformed record; a well-formed record with nothing to
    learn from comes back with ``skip`` set (the rules: :mod:`spice.features.records`).
    """
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    rid = obj.get("id", None)
    if rid is None:
        rid = default_id
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise RecordError(f"{where}: field 'id' must be a string or integer")
    rid = str(rid)
    if "messages" in obj:
        msgs = _chat(obj["messages"], "messages", "role", "content", where)
        return _check_chat(Record(id=rid, kind="chat", messages=msgs, source=where))
    if "conversations" in obj:
        msgs = _chat(obj["conversations"], "conversations", "from", "value", where)
        return _check_chat(Record(id=rid, kind="chat", messages=msgs, source=where))
    if "instruction" in obj:
        ins = _need_str(obj, "instruction", where)
        inp = _need_str(obj, "input", where, optional=True)
        out = _need_str(obj, "output", where)
        if inp:
            prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=ins, input=inp)
        else:
            prompt = ALPACA_PROMPT.format(instruction=ins)
        rec = Record(id=rid, kind="text", prompt=prompt, response=out, source=where)
    elif "prompt" in obj:
        prompt = _need_str(obj, "prompt", where)
        if "response" in obj:
            resp = _need_str(obj, "response", where)
        elif "completion" in obj:
            resp = _need_str(obj, "completion", where)
        else:
            raise RecordError(f"{where}: record has 'prompt' but no 'response' or 'completion'")
        rec = Record(id=rid, kind="text", prompt=prompt, response=resp, source=where)
    else:
        keys = sorted(obj)[:8]
        raise RecordError(
            f"{where}: unrecognised record with keys {keys}; expected alpaca (instruction/input/"
            "output), prompt/response|completion, messages (role/content) or conversations "
            "(from/value)"
        )
    if _blank(rec.response):
        return replace(rec, skip="empty_response", detail=_why_blank(rec.response, "the response"))
    return rec
