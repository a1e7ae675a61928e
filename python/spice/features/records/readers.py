"""Reading records from files (JSONL, JSON, Parquet, Arrow), Hugging Face datasets or lists of
dicts, and fingerprinting their content."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from ...errors import RecordError
from ...hfdata import (
    check_columns,
    check_mapped_columns,
    iter_source_rows,
    map_columns,
    resolve_source,
    source_columns,
    source_name,
)
from .parsing import Record, parse_record


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


def iter_file_items(path: Path) -> Iterable[tuple[Any, str]] | None:
    """The raw items of a JSONL, JSON (array or lines) or Parquet file, each with where it sits
    (file:line or file:row), by the file's suffix; None for any other suffix."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix == ".json":
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
        return _iter_json_array(path) if head.startswith(b"[") else _iter_jsonl(path)
    if suffix in (".jsonl", ".ndjson"):
        return _iter_jsonl(path)
    return None


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
        found = iter_file_items(path)
        if found is None:
            raise RecordError(
                f"{path}: unknown data file type {suffix!r} (jsonl, json, "
                "parquet, arrow, or a datasets save_to_disk folder)"
            )
        items = found
        if suffix == ".parquet":
            table_names = _parquet_columns(path)
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
