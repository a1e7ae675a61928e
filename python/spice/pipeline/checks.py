"""The checks that come before any costly step: the data can be read and has something to learn
from, a feature store was made from the data, the output folder can take the result; what a
feature store folder holds so far; the clean-up of the folders a failed first step made."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import PipelineError


def check_data(
    data: Any,
    *,
    split: str | None = None,
    columns: Mapping[str, str] | None = None,
    invalid: str = "error",
    what: str = "data",
) -> list:
    """Read and check ``data`` before any costly step (loading a model): it exists and can be
    read, every record parses (with ``invalid="error"``), and at least one record has something
    to learn from. ``split``, ``columns`` and ``invalid`` are :func:`spice.features.load_records`'s;
    ``what`` names the data in messages (the CLI passes ``"--data"``).

    Returns:
        the records (a list of :class:`spice.features.Record`, one per row, skipped ones included).

    Raises:
        PipelineError: a missing or unreadable path, no records, or none with anything to learn.
        RecordError: a malformed record (the message names the file and line), with
            ``invalid="error"``.
    """
    from collections import Counter

    from ..features.records import load_records

    name = f"{what} {data}" if isinstance(data, (str, os.PathLike)) else what
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if not p.exists():
            raise PipelineError(f"{name}: no such file or folder")
        if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
            raise PipelineError(f"{name}: cannot be read (permission denied)")
    try:
        records = load_records(data, invalid=invalid, split=split, columns=columns)
    except PermissionError as e:  # a file inside a dataset folder
        raise PipelineError(f"{name}: cannot read {e.filename} (permission denied)") from e
    if not records:
        empty = isinstance(data, (str, os.PathLike)) and Path(data).is_file()
        empty = empty and Path(data).stat().st_size == 0
        raise PipelineError(
            f"{name} holds no records ({'an empty file' if empty else 'no rows or lines'})"
        )
    if all(r.skipped for r in records):
        reasons = Counter(r.skip for r in records)
        listed = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        raise PipelineError(
            f"none of the {len(records)} records of {name} has anything to learn from ({listed})"
        )
    return records


def _columns_text(columns: Mapping[str, str] | None) -> str:
    """``--columns`` as typed (``prompt=question,response=answer``)."""
    return ",".join(f"{k}={v}" for k, v in columns.items()) if columns else ""


def _mismatch_reason(
    store: Any, data: Any, records: list, split: str | None, columns: Mapping[str, str] | None
) -> str:
    """Why ``data`` read as asked is not what ``store`` was made from, as far as can be told:
    other --split/--columns (when the store records them), no records, an invalid record (its
    line), or another record count; the content otherwise."""
    want = store.config.get("data", {})
    made = store.manifest.get("data_read") if hasattr(store, "manifest") else None
    if isinstance(made, dict):
        if (made.get("columns") or None) != (dict(columns) if columns else None):
            used = made.get("columns")
            return (
                f"it was made with {'--columns ' + _columns_text(used) if used else 'no --columns'}"
                f", this run reads {data} with "
                f"{'--columns ' + _columns_text(columns) if columns else 'none'}: pass the same "
                "--columns as `spice features` had"
            )
        if made.get("split") != split:
            used, now = made.get("split"), split
            return (
                f"it was made from split {used!r}, this run reads split {now!r}: pass the same "
                "--split as `spice features` had"
            )
    made_from = f"it was made from {want['records']} records" if "records" in want else ""
    if not records:
        return f"{data} holds no records" + (f"; {made_from}" if made_from else "")
    bad = [r for r in records if r.kind == "invalid"]
    if bad:
        more = f" ({len(bad)} of its {len(records)} records are invalid)" if len(bad) > 1 else ""
        text = f"{bad[0].detail}{more}"
        if not isinstance(made, dict) and columns is None and len(bad) == len(records):
            # an older store does not record --columns: the likeliest cause when nothing parses
            text += "; if the features were made with --columns, pass the same --columns here"
        return text
    if "records" in want and int(want["records"]) != len(records):
        return f"{data} has {len(records)} records; {made_from}"
    return "the records' content differs"


def check_store_matches(
    store: Any, data: Any, split: str | None = None, columns: Mapping[str, str] | None = None
) -> dict:
    """Refuse a feature store that was not made from ``data`` (row count and fingerprint);
    ``split`` and ``columns`` say how to read ``data`` (:func:`spice.features.load_records`).
    A store that records no data (another tool's, :func:`spice.stores.open`) is checked by its
    row count only. The message says what differs where it can be told: the ``--columns`` or
    ``--split`` the store was made with, an empty file, or the first invalid record's line."""
    from ..features.records import data_fingerprint, file_sha256, load_records

    want = store.config.get("data", {})
    records = load_records(data, invalid="skip", split=split, columns=columns)
    if not want:  # another tool's gradients (spice.stores): they record nothing of their data
        if len(records) != len(store):
            raise PipelineError(
                f"feature store {store.path} has {len(store)} rows, the data has "
                f"{len(records)} records: row i must be record i"
            )
        return data_fingerprint(data, records)
    fp = data_fingerprint(data, records)
    # stores written before content fingerprints recorded the file's bytes
    have = file_sha256(data) if want.get("kind") == "file" else fp["sha256"]
    if want.get("sha256") and want["sha256"] != have:
        raise PipelineError(
            f"feature store {store.path} was made from other data: "
            f"{_mismatch_reason(store, data, records, split, columns)} "
            f"(fingerprint {want['sha256'][:12]}…, {data} is {have[:12]}…)"
        )
    rows = len(store)
    if want.get("records") is not None and int(want["records"]) != rows:
        raise PipelineError(
            f"feature store {store.path} has {rows} rows, its data had {want['records']}"
        )
    return fp


def store_progress(path: str | os.PathLike) -> dict | None:
    """What a feature store folder holds so far, from its manifest and chunk markers (the rows
    are not read or checked; a resumed run checks them): ``{"complete": bool, "rows": total
    rows, "chunks": chunks of this store or part, "done_chunks", "done_rows": rows of finished
    chunks, "partial_rows": rows saved in unfinished chunks}``; None where there is no store."""
    import json

    path = Path(path)
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict):
        return None
    total = int(m.get("rows", m.get("total_rows", 0)) or 0)
    if m.get("status") == "complete":
        n = len(m.get("chunks", ())) or 1
        return dict(complete=True, rows=total, chunks=n, done_chunks=n, done_rows=total,
                    partial_rows=0)  # fmt: skip
    mine = m.get("my_chunks") or []
    done_chunks = done_rows = partial = 0
    for marker in sorted((path / "shards").glob("chunk-*.json")):
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            if marker.name.endswith(".partial.json"):
                partial += len(meta["done"])
            else:
                done_chunks += 1
                done_rows += int(meta["rows"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged marker: its chunk is recomputed
    return dict(complete=False, rows=total, chunks=len(mine), done_chunks=done_chunks,
                done_rows=done_rows, partial_rows=partial)  # fmt: skip


def check_out_dir(out: str | os.PathLike, overwrite: bool, marker: str) -> Path:
    """Refuse an ``out`` that is a file, or that already holds ``marker`` unless ``overwrite``;
    creates nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"output path {out} exists and is not a directory")
    if (out / marker).exists() and not overwrite:
        raise PipelineError(f"{out} already holds a result ({marker}); pass --overwrite")
    return out


def prepare_out_dir(out: str | os.PathLike, overwrite: bool, marker: str) -> Path:
    """:func:`check_out_dir`, then create ``out``."""
    out = check_out_dir(out, overwrite, marker)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def removed_if_failed(path: Path) -> Iterator[None]:
    """If the block fails, remove the folders it made for ``path`` (``path`` and those of its
    parents that did not exist before) when they hold no file: empty folders are all a failed
    first step can leave, and a file in them (a resumable chunk, say) is kept."""
    path = Path(path).absolute()
    made = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)
    try:
        yield
    except BaseException:
        if made is not None and made.is_dir() and not any(p.is_file() for p in made.rglob("*")):
            shutil.rmtree(made, ignore_errors=True)
        raise
