"""Hugging Face datasets in and out, and the column mapping for unusual schemas.

In: a ``datasets.Dataset`` (one split of a ``DatasetDict``: ``dd["train"]``, or the
``DatasetDict`` with ``split="train"``), a ``save_to_disk`` directory (a ``Dataset`` one, or a
``DatasetDict`` one with ``split``), an Arrow IPC file (``.arrow``, stream or file format) and
Parquet. Their rows feed :func:`spice.features.records.load_records` like any other records (same
skip rules, same content fingerprint). ``columns`` maps spice's fields onto a schema's own column
names: ``{"prompt": "question", "response": "answer"}``, ``{"messages": "dialog"}``, optionally
with ``"system"``.

Out: :func:`subset_of` (``Selection.subset``) and :func:`write_dataset_subset` (a flattened
``save_to_disk`` folder and a Parquet file). ``datasets`` and ``pyarrow`` are imported only when
used; a missing one is an error naming the extra that installs it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import RecordError

__all__ = [
    "COLUMN_KEYS",
    "parse_columns",
    "check_columns",
    "is_dataset",
    "is_dataset_dict",
    "is_hf_path",
    "resolve_source",
    "source_columns",
    "iter_source_rows",
    "map_columns",
    "subset_of",
    "write_dataset_subset",
    "datasets_module",
]

#: the fields a column mapping may name
COLUMN_KEYS = ("prompt", "response", "messages", "system")


def datasets_module() -> Any:
    """The ``datasets`` package, or an error naming the extra that installs it."""
    try:
        import datasets
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "Hugging Face datasets support needs datasets, which is not "
            "installed: pip install 'spice-select[hf-datasets]'",
            name="datasets",
        ) from e
    return datasets


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "Arrow data needs pyarrow, which is not installed: pip install 'spice-select[parquet]'",
            name="pyarrow",
        ) from e
    return pa


# ----------------------------------------------------------------------------------------------
# column mapping


def parse_columns(text: str) -> dict[str, str]:
    """Parse the command line's ``prompt=question,response=answer`` into a mapping.

    Raises:
        ValueError: a piece that is not ``key=column``, a repeated key, or a mapping that
            :func:`check_columns` refuses.
    """
    out: dict[str, str] = {}
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        key, sep, col = piece.partition("=")
        key, col = key.strip(), col.strip()
        if not sep or not key or not col:
            raise ValueError(
                f"--columns: {piece!r} is not key=column (e.g. prompt=question,response=answer)"
            )
        if key in out:
            raise ValueError(f"--columns: {key!r} is given twice")
        out[key] = col
    return check_columns(out)


def check_columns(columns: Mapping[str, str] | None) -> dict[str, str] | None:
    """Validate a column mapping: keys among :data:`COLUMN_KEYS`, string values, and either
    ``prompt`` with ``response`` or ``messages`` (``system`` optional with both).

    Raises:
        ValueError: naming the bad key or the missing partner.
    """
    if columns is None:
        return None
    if not isinstance(columns, Mapping):
        raise TypeError(
            f"columns must be a mapping such as {{'prompt': 'question', 'response': "
            f"'answer'}}, got {type(columns).__name__}"
        )
    cols = dict(columns)
    for key, col in cols.items():
        if key not in COLUMN_KEYS:
            raise ValueError(
                f"columns: unknown field {key!r}; the fields are {', '.join(COLUMN_KEYS)}"
            )
        if not isinstance(col, str) or not col:
            raise ValueError(f"columns: {key} must name a column (a non-empty string), got {col!r}")
    if not cols:
        raise ValueError("columns: the mapping is empty; map prompt and response, or messages")
    if "messages" in cols:
        both = [k for k in ("prompt", "response") if k in cols]
        if both:
            raise ValueError(
                f"columns: map either messages or prompt/response, not both "
                f"(got messages and {' and '.join(both)})"
            )
    else:
        for a, b in (("prompt", "response"), ("response", "prompt")):
            if a in cols and b not in cols:
                raise ValueError(f"columns: {a} is mapped but {b} is not")
        if "prompt" not in cols:
            raise ValueError(
                "columns: map prompt and response, or messages (system alone "
                "says nothing about the examples)"
            )
    return cols


def _sharegpt_like(msgs: Any) -> bool:
    return (
        isinstance(msgs, list)
        and bool(msgs)
        and isinstance(msgs[0], dict)
        and "from" in msgs[0]
        and "role" not in msgs[0]
    )


def map_columns(obj: Any, columns: Mapping[str, str], where: str) -> Any:
    """One raw record rewritten onto spice's fields (``prompt``/``response`` or ``messages`` /
    ``conversations``), keeping its ``id``; only the mapped columns are read.

    A non-empty ``system`` becomes a leading system turn: of the conversation, or of a chat made
    of the prompt (user) and the response (assistant). A conversation whose turns use ShareGPT's
    ``from``/``value`` is read as ShareGPT. A record that is not an object is returned as it is
    (the record parser names it).

    Raises:
        RecordError: a mapped column missing from the record, null, or of the wrong type.
    """
    if not isinstance(obj, dict):
        return obj

    def get(key: str) -> Any:
        col = columns[key]
        if obj.get(col) is None:  # a table's null arrives as an absent field
            if key == "system":
                return None
            has = sorted(k for k, v in obj.items() if v is not None)
            raise RecordError(
                f"{where}: column {col!r} (mapped as {key}) is missing or null; "
                f"the record has {has}"
            )
        return obj[col]

    out: dict[str, Any] = {}
    if "id" in obj:
        out["id"] = obj["id"]
    system = get("system") if "system" in columns else None
    if system is not None and not isinstance(system, str):
        raise RecordError(
            f"{where}: column {columns['system']!r} (system) must be a string, "
            f"got {type(system).__name__}"
        )
    if "messages" in columns:
        msgs = get("messages")
        share = _sharegpt_like(msgs)
        if system and isinstance(msgs, list):
            turn = (
                {"from": "system", "value": system}
                if share
                else {"role": "system", "content": system}
            )
            msgs = [turn, *msgs]
        out["conversations" if share else "messages"] = msgs
        return out
    texts = {}
    for key in ("prompt", "response"):
        v = get(key)
        if not isinstance(v, str):
            raise RecordError(
                f"{where}: column {columns[key]!r} ({key}) must be a string, got {type(v).__name__}"
            )
        texts[key] = v
    if system:
        out["messages"] = [
            {"role": "system", "content": system},
            {"role": "user", "content": texts["prompt"]},
            {"role": "assistant", "content": texts["response"]},
        ]
    else:
        out.update(texts)
    return out


def check_mapped_columns(columns: Mapping[str, str], available: Iterable[str], name: str) -> None:
    """Refuse a mapping that names a column the data does not have, listing the ones it has.

    Raises:
        RecordError: naming the unknown column and the available ones.
    """
    have = sorted(set(available))
    for key, col in columns.items():
        if col not in have:
            raise RecordError(
                f"{name} has no column {col!r} (mapped as {key}={col}); its "
                f"columns: {', '.join(have) if have else '(none)'}"
            )


# ----------------------------------------------------------------------------------------------
# sources


def is_dataset(obj: Any) -> bool:
    """True for a ``datasets.Dataset`` (checked without importing ``datasets``)."""
    mod = sys.modules.get("datasets")
    if mod is not None and isinstance(obj, mod.Dataset):
        return True
    return (
        hasattr(obj, "features")
        and hasattr(obj, "num_rows")
        and hasattr(obj, "select")
        and hasattr(obj, "__getitem__")
        and not isinstance(obj, Mapping)
    )


def is_dataset_dict(obj: Any) -> bool:
    """True for a ``datasets.DatasetDict`` (checked without importing ``datasets``)."""
    mod = sys.modules.get("datasets")
    return mod is not None and isinstance(obj, mod.DatasetDict)


def _is_dataset_dir(path: Path) -> bool:
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_hf_path(path: str | os.PathLike[str]) -> bool:
    """True for a ``save_to_disk`` directory or an ``.arrow`` file: the inputs whose subset is
    written as a dataset folder and Parquet (rather than in the input's own file format)."""
    p = Path(path)
    if p.is_dir():
        return _is_dataset_dir(p) or (p / "dataset_dict.json").is_file()
    return p.suffix.lower() == ".arrow"


def _pick_split(dd: Any, split: str | None, name: str) -> Any:
    splits = sorted(dd.keys())
    if split is None:
        eg = "train" if "train" in splits or not splits else splits[0]
        raise ValueError(
            f"{name} is a DatasetDict with splits {', '.join(splits)}: choose one "
            f"(--split {eg}, or split={eg!r} in Python)"
        )
    if split not in dd:
        raise ValueError(f"{name} has no split {split!r}; its splits: {', '.join(splits)}")
    return dd[split]


def _read_arrow(path: Path) -> Any:
    """An Arrow IPC file (the file format, or the stream format ``datasets`` writes), memory
    mapped."""
    pa = _pyarrow()
    source = pa.memory_map(str(path))
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid as e:
        raise RecordError(f"{path}: not an Arrow IPC file or stream ({e})") from None


def resolve_source(data: Any, split: str | None = None) -> Any:
    """What rows come from: a ``datasets.Dataset`` or a ``pyarrow.Table`` (an ``.arrow`` file);
    ``None`` when ``data`` is none of the forms this module reads (a JSON/JSONL/Parquet path or a
    list of dicts, which the record loader reads itself).

    Raises:
        ValueError: a DatasetDict (object or folder) without ``split`` or without that split (the
            message lists the splits), ``split`` given for data that has none, a folder that is
            not a ``save_to_disk`` folder.
    """
    if is_dataset_dict(data):
        return _pick_split(data, split, "the DatasetDict")
    if is_dataset(data):
        if split is not None:
            raise ValueError(f"split={split!r} applies to a DatasetDict; this is one Dataset")
        return data
    if not isinstance(data, (str, os.PathLike)):
        if split is not None:
            raise ValueError(
                f"split={split!r} applies to a DatasetDict or a save_to_disk "
                f"folder of one, not to a {type(data).__name__}"
            )
        return None
    path = Path(data)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            dd = datasets_module().load_from_disk(str(path))
            return _pick_split(dd, split, str(path))
        if _is_dataset_dir(path):
            if split is not None:
                raise ValueError(
                    f"--split {split} applies to a DatasetDict folder (with "
                    f"dataset_dict.json); {path} holds one Dataset"
                )
            return datasets_module().load_from_disk(str(path))
        raise ValueError(
            f"{path} is a directory but not a datasets save_to_disk folder (no "
            "dataset_info.json and state.json, nor dataset_dict.json)"
        )
    if split is not None:
        raise ValueError(f"--split {split} applies to a DatasetDict folder; {path} is a file")
    if path.suffix.lower() == ".arrow":
        if not path.is_file():
            raise FileNotFoundError(f"no data file at {path}")
        return _read_arrow(path)
    return None


def source_columns(source: Any) -> list[str]:
    """Column names of a resolved source (a Dataset or a pyarrow Table)."""
    return list(source.column_names)


def _drop_nulls(row: dict) -> dict:
    """A table row without its null fields: a table gives every row every column, null where a
    JSON record would simply not have the field."""
    return {k: v for k, v in row.items() if v is not None}


def iter_source_rows(source: Any, name: str, batch_rows: int = 1024) -> Iterator[tuple[Any, str]]:
    """(row as a dict without null fields, where) for every row of a resolved source, in order."""
    if is_dataset(source):
        batches: Iterable[Any] = source.with_format("arrow").iter(batch_size=batch_rows)
    else:
        batches = source.to_batches(max_chunksize=batch_rows)
    row = 0
    for batch in batches:
        for obj in batch.to_pylist():
            yield _drop_nulls(obj), f"{name}: row {row}"
            row += 1


def source_name(data: Any, split: str | None) -> str:
    """How errors name the data: the path (and split), or the object's type."""
    if isinstance(data, (str, os.PathLike)):
        return f"{data} (split {split})" if split else str(data)
    if is_dataset_dict(data) and split:
        return f"the DatasetDict's split {split!r}"
    return f"the {type(data).__name__}"


# ----------------------------------------------------------------------------------------------
# out


def subset_of(dataset: Any, indices: Any, pool_size: int, keep_in_memory: bool = True) -> Any:
    """``dataset.select(indices)`` flattened (``flatten_indices``): a dataset of exactly those
    rows, in that order, with no indices mapping left.

    Raises:
        TypeError: ``dataset`` is a DatasetDict (pass one split) or not a Dataset.
        ValueError: the dataset does not have ``pool_size`` rows (it is not the data the
            selection was made from).
    """
    if is_dataset_dict(dataset):
        raise TypeError(
            f"subset() needs one split of the DatasetDict (e.g. dataset['train']); "
            f"its splits: {', '.join(sorted(dataset.keys()))}"
        )
    if not is_dataset(dataset):
        raise TypeError(f"subset() needs a datasets.Dataset, got {type(dataset).__name__}")
    if len(dataset) != pool_size:
        raise ValueError(
            f"the dataset has {len(dataset)} rows but the selection was made from "
            f"{pool_size}: it is not the data the selection indexes"
        )
    idx = [int(i) for i in indices]
    return dataset.select(idx).flatten_indices(keep_in_memory=keep_in_memory)


def write_dataset_subset(
    source: Any,
    indices: Any,
    out_dir: str | os.PathLike[str],
    dir_name: str = "subset",
    parquet_name: str = "subset.parquet",
) -> tuple[Path, Path]:
    """Write rows ``indices`` (in that order) of a resolved source (a Dataset or a pyarrow Table)
    as a flattened ``save_to_disk`` folder and as a Parquet file in ``out_dir``; returns both
    paths. Every column of the source is kept."""
    ds_mod = datasets_module()
    if is_dataset(source):
        sub = subset_of(source, indices, len(source))
    else:
        pa = _pyarrow()
        table = source.take(pa.array([int(i) for i in indices], type=pa.int64()))
        sub = ds_mod.Dataset(table)
    out = Path(out_dir)
    folder, parquet = out / dir_name, out / parquet_name
    sub.save_to_disk(str(folder))
    sub.to_parquet(str(parquet))
    return folder, parquet


def dataset_description(data: Any, split: str | None) -> str:
    """What ``selection.json`` records as the data: a resolved path, or the object's type and
    (for a Dataset) its cache files."""
    if isinstance(data, (str, os.PathLike)):
        return str(Path(data).resolve())
    files = [f.get("filename") for f in getattr(data, "cache_files", []) or []]
    return json.dumps({"type": type(data).__name__, "split": split, "cache_files": files})
