"""What the selection's limits read from its inputs: each row's token count from the feature
store (``--budget-tokens``) and each record's group from the data (``--group-field``,
``--quotas``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PipelineError


def store_tokens(store: Any) -> np.ndarray:
    """Per-row token counts of a feature store (its index's ``tokens``: sequence length after
    truncation), as the costs of a token budget; a skipped record's 0 counts as 1 (its zero row
    is never picked, and costs must be positive).

    Raises:
        PipelineError: the store records no token counts (another tool's gradients).
    """
    index = getattr(store, "index", None)
    tokens = getattr(index, "tokens", None)
    if tokens is None:
        raise PipelineError(
            f"feature store {getattr(store, 'path', store)} records no token counts; "
            "--budget-tokens needs a store written by spice features"
        )
    tokens = np.asarray(tokens, dtype=np.float64)
    if tokens.shape != (len(store),):
        raise PipelineError(f"feature store has {len(store)} rows but {tokens.size} token counts")
    return np.maximum(tokens, 1.0)


def record_groups(data: Any, field: str, *, split: str | None = None) -> np.ndarray:
    """The group of every record of ``data``: its field ``field`` (a string, or an integer read
    as its text), in record order (row i of a feature store made from ``data`` is record i).
    Records are read raw, as :func:`spice.features.load_records` reads them (same files, same
    order, table nulls as absent fields); ``--columns`` does not apply (the field is named as
    the data has it).

    Raises:
        PipelineError: a record without the field, with a value that is not a string or an
            integer, or that is not an object (invalid JSON); the message names its file and
            line (or row).
    """
    from ..features.records.readers import _Bad, iter_file_items
    from ..hfdata import iter_source_rows, resolve_source, source_name

    items: Any
    source = resolve_source(data, split)
    if source is not None:
        items = iter_source_rows(source, source_name(data, split))
    elif isinstance(data, (str, os.PathLike)):
        path = Path(data)
        found = iter_file_items(path)
        if found is None:
            raise PipelineError(
                f"{path}: cannot read a group field from a {path.suffix.lower()!r} file"
            )
        items = found
    else:
        items = ((obj, f"records[{i}]") for i, obj in enumerate(data))
    labels = []
    for obj, where in items:
        if isinstance(obj, _Bad) or not isinstance(obj, dict):
            why = obj.message if isinstance(obj, _Bad) else f"a {type(obj).__name__}"
            raise PipelineError(
                f"{where}: the record is not an object ({why}), so it has no group field {field!r}"
            )
        v = obj.get(field)
        if v is None:
            keys = ", ".join(sorted(obj)[:8])
            raise PipelineError(
                f"{where}: the record has no field {field!r} to read its group from (its "
                f"fields: {keys})"
            )
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise PipelineError(
                f"{where}: field {field!r} is a {type(v).__name__}; a group is a string or an "
                "integer"
            )
        labels.append(str(v))
    return np.array(labels, dtype=str)


def check_quotas(
    data: Any,
    group_field: str | None,
    quotas: Mapping[str, int | float] | None,
    *,
    split: str | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """The records' groups (:func:`record_groups`), after checking that ``group_field`` and
    ``quotas`` come together, that every group ``quotas`` names is one some record has, and
    (``rows``) that there is one group per row of the store.

    Raises:
        PipelineError: what is missing or unknown, with the groups the data has.
    """
    if group_field is None or quotas is None:
        raise PipelineError(
            "quotas and a group field go together: --quotas needs --group-field (the record "
            "field that names each record's group) and --group-field needs --quotas"
        )
    groups = record_groups(data, group_field, split=split)
    if rows is not None and groups.size != rows:
        raise PipelineError(
            f"the data has {groups.size} records but the feature store {rows} rows: row i "
            "must be record i"
        )
    have = set(groups.tolist())
    unknown = [g for g in quotas if g not in have]
    if unknown:
        names = sorted(have)
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise PipelineError(
            f"quotas name the group(s) {', '.join(map(repr, unknown))}, which no record has in "
            f"its field {group_field!r} (its groups: {shown})"
        )
    return groups
