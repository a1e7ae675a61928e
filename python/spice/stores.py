"""The former name of :mod:`spice.formats` (other tools' gradient stores), kept so that
``spice.stores.open(path)`` and ``from spice.stores import ...`` go on working."""

from __future__ import annotations

from .formats import FORMATS, ExternalStore, UnrecognizedStoreError, open

__all__ = ["open", "ExternalStore", "UnrecognizedStoreError", "FORMATS"]
