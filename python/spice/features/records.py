"""Loading instruction data and turning records into token ids with a loss mask.

Accepted record shapes (one JSON object per record):

- alpaca: ``instruction``, optional ``input``, ``output``;
- prompt/response: ``prompt`` and ``response`` (or ``completion``);
- chat: ``messages`` = list of ``{"role", "content"}``; rendered with the tokenizer's chat template
  when it has one, else a plain ``role:\\ncontent\\n`` layout; the loss covers the assistant turns;
- ShareGPT: ``conversations`` = list of ``{"from", "value"}`` (mapped to chat roles).

An optional ``id`` (str or int) names the record; otherwise its 0-based position is its id.
Files: JSONL, JSON (an array of objects), Parquet, a ``datasets.Dataset``, or a list of dicts.
Malformed input raises :class:`RecordError` naming the file and line (or row).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

__all__ = [
    "Record",
    "RecordError",
    "TokenizedRecord",
    "load_records",
    "data_fingerprint",
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


class RecordError(ValueError):
    """A record (or the file holding it) is malformed; the message names file and line/row."""


@dataclass(frozen=True)
class Record:
    """One training example, normalised.

    Exactly one of (``prompt``, ``response``) or ``messages`` is used: ``kind == "text"`` means the
    text ``prompt + response`` with the loss on ``response``; ``kind == "chat"`` means ``messages``
    (dicts with ``role`` and ``content``) with the loss on assistant turns.
    """

    id: str
    kind: str
    prompt: str = ""
    response: str = ""
    messages: tuple[dict, ...] = ()
    source: str = ""


@dataclass
class TokenizedRecord:
    """Token ids and loss mask of one record (after truncation).

    Attributes:
        input_ids: int64 (T,) token ids.
        loss_mask: bool (T,); True at positions whose token is a loss target (predicted from the
            previous position). Position 0 is never a target.
        truncated: the sequence was cut to ``max_length``.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    truncated: bool = False
    flags: list[str] = field(default_factory=list)

    @property
    def n_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


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


def _chat(msgs: Any, key: str, role_key: str, text_key: str, where: str) -> tuple[dict, ...]:
    if not isinstance(msgs, (list, tuple)):
        raise RecordError(f"{where}: field {key!r} must be a list, got {type(msgs).__name__}")
    out = []
    for j, m in enumerate(msgs):
        w = f"{where}: {key}[{j}]"
        if not isinstance(m, dict):
            raise RecordError(f"{w} must be an object, got {type(m).__name__}")
        role = _need_str(m, role_key, w)
        content = _need_str(m, text_key, w)
        if key == "conversations":
            mapped = _SHAREGPT_ROLES.get(role.lower())
            if mapped is None:
                known = sorted(_SHAREGPT_ROLES)
                raise RecordError(f"{w}: unknown speaker {role!r} (known: {known})")
            role = mapped
        out.append({"role": role, "content": content})
    return tuple(out)


def parse_record(obj: Any, default_id: str, where: str) -> Record:
    """Normalise one raw record (a dict) into a :class:`Record`; ``where`` names it in errors."""
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
        return Record(id=rid, kind="chat", messages=msgs, source=where)
    if "conversations" in obj:
        msgs = _chat(obj["conversations"], "conversations", "from", "value", where)
        return Record(id=rid, kind="chat", messages=msgs, source=where)
    if "instruction" in obj:
        ins = _need_str(obj, "instruction", where)
        inp = _need_str(obj, "input", where, optional=True)
        out = _need_str(obj, "output", where)
        if inp:
            prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=ins, input=inp)
        else:
            prompt = ALPACA_PROMPT.format(instruction=ins)
        return Record(id=rid, kind="text", prompt=prompt, response=out, source=where)
    if "prompt" in obj:
        prompt = _need_str(obj, "prompt", where)
        if "response" in obj:
            resp = _need_str(obj, "response", where)
        elif "completion" in obj:
            resp = _need_str(obj, "completion", where)
        else:
            raise RecordError(f"{where}: record has 'prompt' but no 'response' or 'completion'")
        return Record(id=rid, kind="text", prompt=prompt, response=resp, source=where)
    keys = sorted(obj)[:8]
    raise RecordError(
        f"{where}: unrecognised record with keys {keys}; expected alpaca (instruction/input/"
        "output), prompt/response|completion, messages (role/content) or conversations (from/value)"
    )


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
                raise RecordError(
                    f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
                ) from None
            try:
                yield json.loads(text), where
            except json.JSONDecodeError as e:
                raise RecordError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


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
            raise RecordError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
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
        raise ImportError(msg) from e
    pf = pq.ParquetFile(path)
    row = 0
    for batch in pf.iter_batches():
        for obj in batch.to_pylist():
            yield obj, f"{path}: row {row}"
            row += 1


DataSource = Union[str, "os.PathLike[str]", Sequence[dict], Any]


def load_records(data: DataSource, *, ids: str | None = None) -> list[Record]:
    """Read and validate records from a file, a ``datasets.Dataset`` or a list of dicts.

    Args:
        data: path to ``.jsonl``/``.json``/``.parquet`` (a ``.json`` file that is not an array is
            read as JSON Lines), a ``datasets.Dataset``, or a sequence of dicts.
        ids: name of the field holding record ids (default ``"id"``; absent means row position).

    Returns:
        list of :class:`Record`, in input order.

    Raises:
        RecordError: a malformed record or file; the message names file and line (or row).
    """
    items: Iterable[tuple[Any, str]]
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise FileNotFoundError(f"no data file at {path}")
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            items = _iter_parquet(path)
        elif suffix == ".json":
            with open(path, "rb") as f:
                head = f.read(4096).lstrip()
            items = _iter_json_array(path) if head.startswith(b"[") else _iter_jsonl(path)
        elif suffix in (".jsonl", ".ndjson"):
            items = _iter_jsonl(path)
        else:
            raise RecordError(f"{path}: unknown data file type {suffix!r} (jsonl, json, parquet)")
    elif hasattr(data, "features") and hasattr(data, "__getitem__") and hasattr(data, "num_rows"):
        items = ((data[i], f"dataset row {i}") for i in range(len(data)))
    elif isinstance(data, Sequence):
        items = ((obj, f"records[{i}]") for i, obj in enumerate(data))
    else:
        raise TypeError(f"cannot read records from {type(data).__name__}")
    out = []
    for pos, (obj, where) in enumerate(items):
        if ids is not None and isinstance(obj, dict) and ids != "id":
            obj = {**obj, "id": obj.get(ids)}
        out.append(parse_record(obj, str(pos), where))
    return out


def data_fingerprint(data: DataSource, records: Sequence[Record] | None = None) -> dict:
    """A fingerprint of the data: sha256 of the file bytes (streamed) for a file, else of the
    normalised records' canonical JSON. Returns ``{"kind", "sha256", "name"}``."""
    h = hashlib.sha256()
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"kind": "file", "name": path.name, "sha256": h.hexdigest()}
    if records is None:
        records = load_records(data)
    for r in records:
        h.update(
            json.dumps(
                [r.id, r.kind, r.prompt, r.response, list(r.messages)],
                sort_keys=True,
                ensure_ascii=False,
            ).encode("utf-8")
        )
        h.update(b"\n")
    return {"kind": "records", "name": type(data).__name__, "sha256": h.hexdigest()}


# ----------------------------------------------------------------------------------------------
# tokenising


def _has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _plain_chat(messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Fallback chat layout ``role:\\ncontent\\n``; spans are assistant contents + newline."""
    text = ""
    spans = []
    for m in messages:
        head = f"{m['role']}:\n"
        text += head
        start = len(text)
        text += m["content"] + "\n"
        if m["role"] == "assistant":
            spans.append((start, len(text)))
    return text, spans


def _template_chat(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render with the chat template; the span of assistant turn i is the text that rendering
    ``messages[:i+1]`` adds to rendering ``messages[:i]`` with the generation prompt."""
    msgs = [dict(m) for m in messages]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if full.startswith(upto) and upto.startswith(before):
            spans.append((len(before), len(upto)))
        else:  # template is not prefix-stable: locate the content after the previous span
            lo = spans[-1][1] if spans else 0
            k = full.find(m["content"], lo)
            if k >= 0:
                spans.append((k, k + len(m["content"])))
    return full, spans


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
    response token when its characters overlap an assistant/response span. The sequence is cut to
    ``max_length`` tokens (flag ``"truncated"``); ``loss_on="all"`` puts every position but the
    first in the loss.
    """
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', got {loss_on!r}")
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if record.kind == "chat":
        if _has_chat_template(tokenizer):
            text, spans = _template_chat(tokenizer, record.messages)
            special = False
        else:
            text, spans = _plain_chat(record.messages)
            special = True
        append_eos = add_eos and not _has_chat_template(tokenizer) and bool(spans)
    else:
        text = record.prompt + record.response
        spans = [(len(record.prompt), len(text))] if record.response else []
        special = True
        append_eos = add_eos and bool(record.response)
    ids, is_resp = _tokenize_with_spans(tokenizer, text, spans, special)
    if append_eos and eos_id is not None and (not ids or ids[-1] != eos_id):
        ids.append(int(eos_id))
        is_resp.append(True)
    input_ids = np.asarray(ids, dtype=np.int64)
    resp = np.asarray(is_resp, dtype=bool)
    truncated = len(input_ids) > max_length
    if truncated:
        input_ids, resp = input_ids[:max_length], resp[:max_length]
    mask = resp.copy() if loss_on == "response" else np.ones(len(input_ids), dtype=bool)
    if len(mask):
        mask[0] = False
    flags = ["truncated"] if truncated else []
    if not mask.any():
        flags.append("empty_response")
    return TokenizedRecord(input_ids=input_ids, loss_mask=mask, truncated=truncated, flags=flags)


def _tokenize_with_spans(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], special: bool
) -> tuple[list[int], list[bool]]:
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        flags = []
        for a, b in enc["offset_mapping"]:
            flags.append(b > a and any(a < e and b > s for s, e in spans))
        return ids, flags
    # slow tokenizer: tokenise the pieces between span boundaries separately
    cuts = sorted({0, len(text), *(x for s in spans for x in s)})
    ids: list[int] = []
    flags: list[bool] = []
    if special and getattr(tokenizer, "bos_token_id", None) is not None:
        probe = tokenizer("", add_special_tokens=True)["input_ids"]
        if probe and probe[0] == tokenizer.bos_token_id:
            ids.append(tokenizer.bos_token_id)
            flags.append(False)
    for a, b in zip(cuts[:-1], cuts[1:]):
        if a == b:
            continue
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        r = any(s <= a and b <= e for s, e in spans)
        ids.extend(piece)
        flags.extend([r] * len(piece))
    return ids, flags
