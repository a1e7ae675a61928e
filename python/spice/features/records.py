"""Loading instruction data and turning records into token ids with a loss mask.

Accepted record shapes (one JSON object per record):

- alpaca: ``instruction``, optional ``input``, ``output``;
- prompt/response: ``prompt`` and ``response`` (or ``completion``);
- chat: ``messages`` = list of ``{"role", "content"}``; rendered with the tokenizer's chat template
  when it has one, else a plain ``role:\\ncontent\\n`` layout; the loss covers the assistant turns;
- ShareGPT: ``conversations`` = list of ``{"from", "value"}`` (mapped to chat roles).

An optional ``id`` (str or int) names the record; otherwise its 0-based position is its id.
Files: JSONL, JSON (an array of objects), Parquet, Arrow, a ``datasets`` ``save_to_disk`` folder,
a ``datasets.Dataset`` (or a ``DatasetDict`` and a split), or a list of dicts; ``columns`` maps
the fields of an unusual schema (:mod:`spice.hfdata`).
Malformed input raises :class:`RecordError` naming the file and line (or row); with
``invalid="skip"`` such a record is kept as a skipped row instead (reason ``invalid_record``).

Records that are well formed but carry nothing to learn from are never an error: they are kept,
in place, as *skipped* records (``Record.skip`` names the reason) so that every input row keeps
its row number, and feature extraction gives them a zero row. The rules (docs/data.md):

- a conversation with no messages: ``empty_conversation``;
- assistant turns before the first user turn are dropped (the record is flagged
  ``dropped_leading_turns``); a conversation with no assistant turn after a user turn:
  ``no_user_turn_before_assistant`` (or ``no_assistant_turn`` when it has a user turn);
- a record whose responses all have no visible content (empty, whitespace, zero-width or other
  invisible characters, punctuation or symbols only: :func:`_visible`): ``empty_response``.

Truncation to ``max_length`` tokens keeps the response: whole leading exchanges of a conversation
are dropped first (the last turns are kept), then the prompt is cut from the left down to a quarter
of ``max_length`` tokens, and only then is the response cut from the right.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import RecordError

__all__ = [
    "Record",
    "RecordError",
    "TokenizedRecord",
    "load_records",
    "data_fingerprint",
    "file_sha256",
    "parse_record",
    "tokenize_record",
    "ALPACA_PROMPT",
    "ALPACA_PROMPT_WITH_INPUT",
]

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


# ----------------------------------------------------------------------------------------------
# parsing records


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
    """Apply the documented rules for conversations (module docstring): drop assistant turns
    before the first user turn; skip records with nothing to learn from."""
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
    learn from comes back with ``skip`` set (see the module docstring for the rules).
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


class _Bad:
    """An item that could not be read as JSON (kept so that invalid="skip" can count it)."""

    def __init__(self, message: str, raw: str):
        self.message = message
        self.raw = raw


def _line_of(data: bytes, pos: int) -> int:
    return data.count(b"\n", 0, pos) + 1


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _line_of(data, e.start)
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise RecordError(
            f"{name}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col})"
        ) from None


def _iter_jsonl(path: Path) -> Iterable[tuple[Any, str]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                col = e.start + 1
                msg = f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {col})"
                yield _Bad(msg, raw.decode("utf-8", "replace").strip()), where
                continue
            try:
                yield json.loads(text), where
            except json.JSONDecodeError as e:
                # some of json's messages end in "at" already ("Invalid control character at")
                msg = f"{where}: invalid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
                yield _Bad(msg, text.strip()), where
            except RecursionError:
                yield _Bad(f"{where}: JSON nested too deeply", text.strip()), where


def _iter_json_array(path: Path) -> Iterable[tuple[Any, str]]:
    data = path.read_bytes()
    text = _decode(data, str(path))
    dec = json.JSONDecoder()
    i = 0
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip(i)
    if i >= n or text[i] != "[":
        raise RecordError(f"{path}:{line(i)}: a .json data file must hold an array of records")
    i = skip(i + 1)
    if i < n and text[i] == "]":
        return
    while True:
        try:
            obj, j = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            msg = f"{e.msg.removesuffix(' at')} at column {e.colno}"
            raise RecordError(f"{path}:{e.lineno}: invalid JSON ({msg})") from None
        except RecursionError:
            raise RecordError(f"{path}:{line(i)}: JSON nested too deeply") from None
        yield obj, f"{path}:{line(i)}"
        i = skip(j)
        if i < n and text[i] == ",":
            i = skip(i + 1)
            continue
        if i < n and text[i] == "]":
            return
        raise RecordError(f"{path}:{line(i)}: expected ',' or ']' in the JSON array")


def _iter_parquet(path: Path) -> Iterable[tuple[Any, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - optional dependency
        msg = "reading Parquet needs pyarrow: pip install 'spice-select[parquet]'"
        raise ModuleNotFoundError(msg, name="pyarrow") from e
    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches():
        for obj in batch.to_pylist():  # a table's null is a JSON record's absent field
            yield {k: v for k, v in obj.items() if v is not None}, f"{path}: row {row}"
            row += 1


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


DataSource = Union[str, "os.PathLike[str]", Sequence[dict], Any]


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def load_records(
    data: DataSource,
    *,
    ids: str | None = None,
    invalid: str = "error",
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> list[Record]:
    """Read and validate records from a file, a Hugging Face dataset or a list of dicts.

    Args:
        data: path to ``.jsonl``/``.json``/``.parquet``/``.arrow`` (a ``.json`` file that is not
            an array is read as JSON Lines), a ``datasets`` ``save_to_disk`` folder, a
            ``datasets.Dataset`` (e.g. ``dataset_dict["train"]``), a ``DatasetDict`` with
            ``split``, or a sequence of dicts. Table rows (Parquet, Arrow, datasets) are read
            without their null fields, as a JSON record without those fields would be.
        ids: name of the field holding record ids (default ``"id"``; absent means row position).
        invalid: ``"error"`` raises :class:`RecordError` at the first malformed record;
            ``"skip"`` keeps it as a skipped record (``kind == "invalid"``, reason
            ``invalid_record``, ``detail`` the message) so every row is accounted for.
        split: the split of a ``DatasetDict`` (object or folder) to read.
        columns: where spice's fields are in an unusual schema, e.g. ``{"prompt": "question",
            "response": "answer"}`` or ``{"messages": "dialog", "system": "sys"}`` (see
            :func:`spice.hfdata.map_columns`); then only those columns (and ``id``) are read.

    Returns:
        list of :class:`Record`, in input order (one per non-blank line / element / row).

    Raises:
        RecordError: a malformed record or file; the message names file and line (or row).
    """
    from ..hfdata import (
        check_columns,
        check_mapped_columns,
        iter_source_rows,
        map_columns,
        resolve_source,
        source_columns,
        source_name,
    )

    if invalid not in ("error", "skip"):
        raise ValueError(f"invalid must be 'error' or 'skip', got {invalid!r}")
    columns = check_columns(columns)
    items: Iterable[tuple[Any, str]]
    table_names: list[str] | None = None  # the columns of a table source
    source = resolve_source(data, split)
    if source is not None:
        name = source_name(data, split)
        table_names = source_columns(source)
        items = iter_source_rows(
            source, name if isinstance(data, (str, os.PathLike)) else "dataset"
        )
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"no data file at {path}")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            items = _iter_parquet(path)
            table_names = _parquet_columns(path)
        elif suffix == ".json":
            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
            items = _iter_json_array(path) if head.startswith(b"[") else _iter_jsonl(path)
        elif suffix in (".jsonl", ".ndjson"):
            items = _iter_jsonl(path)
        else:
            raise RecordError(
                f"{path}: unknown data file type {suffix!r} (jsonl, json, "
                "parquet, arrow, or a datasets save_to_disk folder)"
            )
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        items = ((obj, f"records[{i}]") for i, obj in enumerate(data))
    else:
        raise TypeError(f"cannot read records from {type(data).__name__}")
    if columns is not None:  # a mapped column the data does not have is a mistake, not a record
        name = source_name(data, split)
        if table_names is None:
            items = list(items)
            table_names = sorted({k for obj, _ in items if isinstance(obj, dict) for k in obj})
        check_mapped_columns(columns, table_names, name)
    out = []
    for pos, (obj, where) in enumerate(items):
        try:
            if isinstance(obj, _Bad):
                raise RecordError(obj.message)
            if ids is not None and isinstance(obj, dict) and ids != "id":
                obj = {**obj, "id": obj.get(ids)}
            if columns is not None:
                obj = map_columns(obj, columns, where)
            out.append(parse_record(obj, str(pos), where))
        except RecordError as e:
            if invalid == "error":
                raise
            raw = obj.raw if isinstance(obj, _Bad) else _canonical(obj)
            out.append(
                Record(
                    id=str(pos),
                    kind="invalid",
                    prompt=raw,
                    source=where,
                    skip="invalid_record",
                    detail=str(e),
                )
            )
    return out


def data_fingerprint(
    data: DataSource,
    records: Sequence[Record] | None = None,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> dict:
    """A fingerprint of the data's content: sha256 over the normalised records (id, kind, texts,
    messages, skip reason), so blank lines, JSON whitespace, key order, extra fields and the
    container (JSONL, Parquet, Arrow, a Hugging Face dataset) do not change it. ``split`` and
    ``columns`` are :func:`load_records`'s, used when ``records`` is not given. Returns
    ``{"kind": "records", "name", "sha256"}``."""
    if records is None:
        records = load_records(data, invalid="skip", split=split, columns=columns)
    h = hashlib.sha256()
    for r in records:
        h.update(
            json.dumps(
                [r.id, r.kind, r.prompt, r.response, list(r.messages), r.skip],
                sort_keys=True,
                ensure_ascii=False,
            ).encode("utf-8")
        )
        h.update(b"\n")
    name = Path(data).name if isinstance(data, (str, os.PathLike)) else type(data).__name__
    return {"kind": "records", "name": name, "sha256": h.hexdigest()}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (the fingerprint stores written by older versions recorded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# tokenising


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
