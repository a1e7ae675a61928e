"""The per-candidate state every ops object and the driver share."""

from __future__ import annotations

from typing import Any

import numpy as np

ALIVE, PICKED, DEAD = 0, 1, 2


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
