"""Per-sample loss-gradient features of a proxy LLM (needs the ``hf`` extra: torch, transformers,
peft).

    >>> from spice.features import extract, LoraSpec
    >>> store = extract(model, tokenizer, "train.jsonl", out="feats", dim=8192)
    >>> store.features.shape          # (n, 8192) float16, memory-mapped
    >>> cfg = ExtractConfig(dim=4096, chunk_rows=1024)   # the same settings as one checked object
    >>> store = extract(model, tokenizer, "train.jsonl", out="feats-4k", config=cfg)

See :func:`extract` and :class:`ExtractConfig`. Reading records (:mod:`spice.features.records`)
needs numpy only; the names that need torch are imported on first use, so ``import
spice.features.records`` works in a numpy-only install.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..store import FeatureStore, StoreError, StoreMismatchError, merge_stores
from .records import Record, RecordError, TokenizedRecord, load_records, tokenize_record

# name -> submodule, imported lazily (these need torch)
_LAZY = {
    "extract": "driver",
    "LoraSpec": "config",
    "DEFAULT_TARGETS": "config",
    "ExtractConfig": "config",
    "prepared_model": "driver",
    "GradientCollector": "hooks",
    "slow_per_sample_gradients": "hooks",
    "LayerSpec": "projection",
    "make_projector": "projection",
    "FactorizedProjector": "projection",
    "DenseProjector": "projection",
    "IdentityProjector": "projection",
    "rademacher": "projection",
}

__all__ = [
    "extract",
    "LoraSpec",
    "ExtractConfig",
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


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'spice.features' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{mod}", __name__), name)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing in ("torch", "transformers", "peft", "tqdm", "safetensors"):
            raise ModuleNotFoundError(
                f"spice.features.{name} needs {missing}, which is not installed: "
                "pip install 'spice-select[hf]'",
                name=e.name,
            ) from e
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
