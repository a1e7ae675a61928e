"""The per-candidate state every ops object and the driver share."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

ALIVE, PICKED, DEAD = 0, 1, 2


class Candidate(NamedTuple):
    """The best live row of one step (the step kernel's five outputs, named).

    ``index`` is -1 (and ``score`` -inf) when no row was live. Still indexable as
    ``(index, score, gain, align, q)``.
    """

    index: int
    score: float  # gain - conflict_penalty * conflict, the value maximised
    gain: float  # Delta = log(1 + alpha q)
    align: float  # cosine to the mean of the earlier picks
    q: float  # residual g^T M^-1 g at this step

    @classmethod
    def from_row(cls, out: Any) -> Candidate:
        """From the kernel's float64 row ``[index, score, gain, align, q]``."""
        return cls(int(out[0]), float(out[1]), float(out[2]), float(out[3]), float(out[4]))


NO_CANDIDATE = Candidate(-1, -math.inf, 0.0, 0.0, 0.0)


class _State:
    """Per-candidate arrays (on the ops' device)."""

    def __init__(self, xp: Any, norm2: Any, alpha: float) -> None:
        self.norm2 = norm2
        self.base = xp.log1p(alpha * norm2)
        self.q = norm2.copy()
        self.delta = self.base.copy()
        self.align = xp.zeros_like(norm2)
        self.score = xp.full_like(norm2, -np.inf)
        self.state = xp.where((norm2 > 0) & (self.base > 0), ALIVE, DEAD).astype(xp.uint8)
