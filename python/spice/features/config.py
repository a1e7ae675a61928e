"""The settings of a feature extraction, :class:`ExtractConfig`, each declared once (default,
domain, one help line) and checked once when made; the ``spice features`` flags are made from
the same fields. Nothing here needs torch, so that the command line can describe them in a
numpy-only install."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .._flags import check_fields, field_doc, setting

PROJECTIONS = ("factorized", "dense", "none")
LOSS_ON = ("response", "all")
NORMALIZE = ("none", "unit")
TARGETS = ("given", "sampled")
DTYPES = ("float16", "float32")

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters to add (with peft) and take gradients with respect to; the base stays frozen.

    Attributes:
        r: adapter rank.
        alpha: LoRA alpha (scaling alpha / r).
        target_modules: module name suffixes to adapt (peft's ``target_modules``).
        init: "default" (peft's: A random, B = 0; a fresh adapter, so A's gradient is exactly zero
            and only B's gradient is featurised) or "random" (B random too; both featurised).
        seed: seed of the adapter initialisation (deterministic across processes and machines).
    """

    r: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    init: str = "default"
    seed: int = 0

    def describe(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass(frozen=True)
class ExtractConfig:
    """What defines the features of an extraction (:func:`spice.features.extract`), checked when
    made: raises ValueError or TypeError naming the setting and what it must be.

    Every field changes the rows a store holds or its layout, so that the same model, tokenizer,
    data and config give the same bytes. How a run goes (``shard``, ``resume``, ``progress``,
    ``checkpoint_seconds``, ``dense_cache_bytes``) and how the data is read (``invalid``,
    ``split``, ``columns``) are :func:`extract`'s own keywords. ``dataclasses.replace(cfg,
    dim=4096)`` makes a changed copy, checked again.
    """

    dim: int = setting(
        8192,
        "feature dimension d: the columns of each feature row (factorized uses at most the "
        "gradient's size)",
        kind=int,
        lo=1,
        flag="--dim",
    )
    projection: str = setting(
        "factorized",
        "how the per-layer gradients become dim columns: factorized (per-layer Kronecker), dense "
        "(seeded Rademacher blocks) or none (the gradient itself)",
        choices=PROJECTIONS,
        flag="--projection",
    )
    lora: LoraSpec | None = setting(
        LoraSpec(),
        "the LoRA adapters to add and take gradients of (a LoraSpec; default r=8 on q, k, v, o, "
        "up, down, gate); None: the model's own nn.Linear layers named by target_modules",
        optional=True,
    )
    target_modules: tuple[str, ...] | None = setting(
        None,
        "with lora=None: the module-name suffixes of the nn.Linear layers to take gradients of "
        "(None: DEFAULT_TARGETS)",
        optional=True,
    )
    loss_on: str = setting(
        "response",
        "the tokens of the per-sample loss: response (mean cross-entropy over the response "
        "tokens) or all (every token but the first)",
        choices=LOSS_ON,
        flag="--loss-on",
    )
    max_length: int = setting(
        512,
        "tokens per record, >= 2; a longer record is truncated and keeps its response "
        "(docs/data.md)",
        kind=int,
        lo=2,
        flag="--max-length",
    )
    batch_size: int = setting(
        64,
        "the most records per forward and backward (records sorted by length within a chunk)",
        kind=int,
        lo=1,
        flag="--batch-size",
    )
    max_batch_tokens: int | None = setting(
        512,
        "the most padded tokens (records x longest record) per batch: what bounds memory, 512 "
        "keeps SmolLM2-135M under 2.5 GB on a CPU; raise it on a GPU (None, in Python: "
        "batch_size alone)",
        kind=int,
        lo=1,
        optional=True,
        flag="--max-batch-tokens",
    )
    normalize: str = setting(
        "none",
        "none, or unit: each row scaled to L2 norm 1 (zero rows stay zero)",
        choices=NORMALIZE,
    )
    targets: str = setting(
        "given",
        "given: gradients of the data's own response tokens (the paper); sampled: targets "
        "drawn from the model's own predictions (Fisher samples that cannot prefer a wrong "
        "label), seeded by the seed",
        choices=TARGETS,
        flag="--targets",
    )
    dtype: str = setting(
        "float16",
        "storage type of the feature rows: float16 (2 bytes a value) or float32 (4)",
        choices=DTYPES,
        flag="--dtype",
    )
    seed: int = setting(
        0,
        "seed of the projection and of the sampled targets, an integer (>= 0 with sampled targets)",
        kind=int,
    )
    chunk_rows: int = setting(
        4096,
        "rows per resumable chunk of the store: the unit of its layout, of resuming and of the "
        "work shared among ranks",
        kind=int,
        lo=1,
        flag="--chunk-rows",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        lora = self.lora
        if lora is not None:
            if not isinstance(lora, LoraSpec):
                raise TypeError(f"lora must be a LoraSpec or None, got {type(lora).__name__}")
            if isinstance(lora.r, bool) or not isinstance(lora.r, numbers.Integral) or lora.r < 1:
                raise ValueError(f"LoraSpec.r must be an integer >= 1, got {lora.r!r}")
            if lora.init not in ("default", "random"):
                raise ValueError(f"LoraSpec.init must be 'default' or 'random', got {lora.init!r}")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", _names(self.target_modules))
        if self.targets == "sampled" and self.seed < 0:
            raise ValueError(f"seed must be >= 0 with targets='sampled', got {self.seed}")

    @property
    def sample_seed(self) -> int | None:
        """The seed of the sampled targets; None when the targets are given."""
        return self.seed if self.targets == "sampled" else None

    def manifest(self) -> dict[str, Any]:
        """The entries of a store manifest's ``config`` that these settings write as they are
        (dim, projection, seed and lora are written as the projector and the model describe
        them; dtype and chunk_rows, as ``shard_rows``, by the store writer)."""
        return {
            "loss_on": self.loss_on,
            "max_length": self.max_length,
            "normalize": self.normalize,
            # only when sampled, so that stores made before this option still resume
            **({"targets": {"kind": self.targets, "seed": self.seed}}
               if self.targets != "given" else {}),
        }  # fmt: skip


def _names(v: Any) -> tuple[str, ...]:
    """``target_modules`` as a tuple of non-empty names."""
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise TypeError(
            f"target_modules must be a list of module-name suffixes (e.g. ['q_proj', 'v_proj']) "
            f"or None, got {v!r}"
        )
    names = tuple(v)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"target_modules must name at least one module, each a non-empty string, got {v!r}"
        )
    return names


ExtractConfig.__doc__ = (ExtractConfig.__doc__ or "") + field_doc(ExtractConfig)
