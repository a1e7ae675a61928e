"""The exceptions spice raises for bad input, damaged files and failed jobs, in one place.

Every module raises these from here (and re-exports the ones it always named), so a caller can
import any of them without importing the module that raises it.
"""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "RecordError",
    "StoreError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "UnrecognizedStoreError",
]


class StoreError(RuntimeError):
    """A feature store is missing, damaged, or cannot be used as asked."""


class StoreMismatchError(StoreError):
    """An existing store was made with a different configuration than the one requested."""


class StoreIncompleteError(StoreError):
    """A store directory holds an unfinished run (resume it by re-running the extraction)."""


class UnrecognizedStoreError(StoreError):
    """A path holds none of the gradient layouts :func:`open` reads."""


class RecordError(ValueError):
    """A record (or the file holding it) is malformed; the message names file and line/row."""


class PipelineError(RuntimeError):
    """A user-facing failure of the job (bad path, mismatched store, existing output)."""
