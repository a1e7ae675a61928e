"""Per-sample loss-gradient features of a proxy LLM (needs the ``hf`` extra: torch, transformers,
peft).

    >>> from spice.features import extract, LoraSpec
    >>> store = extract(model, tokenizer, "train.jsonl", out="feats", dim=8192)
    >>> store.features.shape          # (n, 8192) float16, memory-mapped

See :func:`extract`; math.md §7 for the algebra.
"""

from __future__ import annotations

from ..store import FeatureStore, StoreError, StoreMismatchError, merge_stores
from .driver import DEFAULT_TARGETS, LoraSpec, extract, prepared_model
from .hooks import GradientCollector, slow_per_sample_gradients
from .projection import (
    DenseProjector,
    FactorizedProjector,
    IdentityProjector,
    LayerSpec,
    make_projector,
    rademacher,
)
from .records import Record, RecordError, TokenizedRecord, load_records, tokenize_record

__all__ = [
    "extract",
    "LoraSpec",
    "DEFAULT_TARGETS",
    "load_records",
    "tokenize_record",
    "Record",
    "RecordError",
    "TokenizedRecord",
    "merge_stores",
    "FeatureStore",
    "StoreError",
    "StoreMismatchError",
    "LayerSpec",
    "make_projector",
    "FactorizedProjector",
    "DenseProjector",
    "IdentityProjector",
    "rademacher",
    "GradientCollector",
    "slow_per_sample_gradients",
    "prepared_model",
]
