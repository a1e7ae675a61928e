"""The settings of a feature extraction, as objects that need neither torch nor numpy (so that
the command line can describe them in a numpy-only install)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
