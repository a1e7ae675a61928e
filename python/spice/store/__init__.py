"""On-disk store of per-sample feature rows (numpy + json only; no torch).

Layout of a finished store directory::

    manifest.json    what the rows are (model, tokenizer, LoRA, projection, data fingerprint, ...)
    features.npy     one contiguous (rows, dim) little-endian float16/float32 array (memory-mapped)
    index.jsonl      one line per row: global row, record id, token counts, loss, flags
    skipped.jsonl    the rows that got no features (zero rows) and why: row, id, reason, detail

While a run is in progress the rows live in ``shards/chunk-NNNNN.npy`` files, each made complete
by a ``chunk-NNNNN.json`` marker (its index rows and the sha256 of its row bytes) written atomically
after the rows. Inside a chunk, partial progress is saved as ``chunk-NNNNN.partial.{npy,json}``
(the rows done so far, float32, and their index rows), so a long chunk is not lost to a crash.
A resumed run keeps every complete chunk and the partial rows, and recomputes the rest; finalising
streams the chunks into ``features.npy`` in chunk order, so an interrupted-then-resumed run produces
the same bytes as an uninterrupted one.

A store written by N ranks together (:class:`SharedStoreWriter`, ``"layout": "shared"`` while in
progress) has no chunk ``.npy`` files: ``features.npy`` is allocated at the start and each rank
writes its chunks' rows in place; ``shards/`` holds only the markers and partial files.

A *part* store (``manifest["part"] == [i, N]`` with N > 1) holds the chunks c with ``c % N == i``;
:func:`merge_stores` checks N parts against each other and joins them into one store whose files are
byte-identical to the store a single process would have written.
"""

from __future__ import annotations

from ..errors import StoreError, StoreIncompleteError, StoreMismatchError
from .atomic import rows_sha256
from .manifest import FORMAT, FORMAT_VERSION, config_mismatch_message
from .merge import merge_stores
from .reader import FeatureStore, StoreIndex
from .shared import SharedStoreWriter
from .skips import SKIP_REASONS, skip_reason
from .writer import StoreWriter

__all__ = [
    "FeatureStore",
    "StoreIndex",
    "StoreError",
    "StoreMismatchError",
    "StoreIncompleteError",
    "StoreWriter",
    "SharedStoreWriter",
    "merge_stores",
    "SKIP_REASONS",
    "skip_reason",
    "FORMAT",
    "FORMAT_VERSION",
    "config_mismatch_message",
    "rows_sha256",
]
