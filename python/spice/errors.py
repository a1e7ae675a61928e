"""The exceptions spice raises for bad input, damaged files and failed jobs, in one place.

Every one derives from :class:`SpiceError` (``except spice.SpiceError`` catches them all) and keeps
the builtin base it always had (``RuntimeError`` or ``ValueError``), so code that catches those
still does. The modules that raise them re-export the names they always had
(``from spice.store import StoreError`` works), so a caller can import any of them from here
without importing the module that raises it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SpiceError",
    "PipelineError",
    "RecordError",
    "ShardFailedError",
    "StoreError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "UnrecognizedStoreError",
]


class SpiceError(Exception):
    """The base of spice's own exceptions: a malformed record, a missing, damaged or mismatched
    store, a failed job. (A bad argument still raises a plain ``ValueError`` or ``TypeError``.)"""


class StoreError(SpiceError, RuntimeError):
    """A feature store is missing, damaged, or cannot be used as asked."""


class StoreMismatchError(StoreError):
    """An existing store was made with a different configuration than the one requested."""


class StoreIncompleteError(StoreError):
    """A store directory holds an unfinished run (resume it by re-running the extraction)."""


class UnrecognizedStoreError(StoreError):
    """A path holds none of the gradient layouts :func:`spice.formats.open` reads."""


class RecordError(SpiceError, ValueError):
    """A record (or the file holding it) is malformed; the message names file and line/row."""


class PipelineError(SpiceError, RuntimeError):
    """A user-facing failure of the job (bad path, mismatched store, existing output)."""


class ShardFailedError(SpiceError, RuntimeError):
    """A shard's Ray actor died, failed, or did not answer in time during a distributed selection.

    Attributes: ``shard`` (its number), ``rows`` (its global ``(first, last + 1)``),
    ``picks_done`` (picks made before the failure), ``checkpoint`` (the file holding them, or
    None) and ``cause`` (the exception raised on the shard, e.g. a StoreError, when there was
    one; the message also carries it, or the last lines of Ray's report).
    """

    def __init__(
        self,
        message: str,
        *,
        shard: int,
        rows: tuple,
        picks_done: int,
        checkpoint: Any,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.rows = rows
        self.picks_done = picks_done
        self.checkpoint = checkpoint
        self.cause = cause
