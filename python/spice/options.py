"""The settings every selection backend takes, checked once: the CPU ``select``,
``spice.distributed`` and the GPU path (``spice.gpu``) share these checks and their messages.

numpy only, and no spice module above it: ``selection`` and ``gpu`` both import from here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._numerics import MAX_ALPHA_NORM2

METHODS = ("naive", "lazy", "stochastic")
OBJECTIVES = ("logdet", "diag-compat", "topk-compat")
NORMALIZE = ("none", "unit")


def resolve_k(k: int | float, n: int) -> int:
    """Turn a count (int) or a fraction in (0, 1] (float) into a number of picks."""
    if isinstance(k, (bool, np.bool_)):
        raise TypeError("k must be an int count or a float fraction, not a bool")
    if isinstance(k, (int, np.integer)):
        k = int(k)
        if k < 0 or k > n:
            raise ValueError(f"k = {k} is out of range: need 0 <= k <= n = {n}")
        return k
    if isinstance(k, (float, np.floating)):
        k = float(k)
        if not (0.0 < k <= 1.0):
            raise ValueError(f"fractional k = {k} must be in (0, 1]")
        return max(1, min(n, int(round(k * n))))
    raise TypeError(f"k must be an int or a float fraction, got {type(k).__name__}")


def _check_number(
    name: str, v: Any, lo: float, lo_open: bool, hi: float = math.inf, hi_open: bool = False
) -> float:
    """A finite real number in the interval (lo or [lo, hi) or hi]; hi = inf: no upper bound
    (infinity itself is never accepted: no parameter of the objective has a meaning there)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        if math.isinf(hi):
            want = f"a finite number {'>' if lo_open else '>='} {lo:g}"
        else:
            want = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{name} = {v} must be {want}")
    return v


def check_options(
    n: int,
    k: int | float,
    *,
    alpha: Any,
    conflict_penalty: Any,
    early_stop: Any,
    method: Any,
    objective: Any,
    stochastic_eps: Any,
    seed: Any,
) -> tuple[int, float, float, float, float, int]:
    """Validate the settings of a selection over n rows, as every backend takes them.

    Returns ``(k, alpha, lambda, omega, stochastic_eps, seed)``: k a count in [0, n], omega 0
    when early stop is off, seed reduced to 64 bits. Raises ValueError/TypeError naming the
    setting (the CPU core and the GPU driver share these messages).
    """
    kk = resolve_k(k, n)
    a = _check_number("alpha", alpha, 0.0, True)
    lam = _check_number("conflict_penalty", conflict_penalty, 0.0, False)
    omega = 0.0
    if early_stop is not None:
        omega = _check_number("early_stop", early_stop, 0.0, True, 1.0, True)
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    seps = _check_number("stochastic_eps", stochastic_eps, 0.0, True, 1.0, True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return kk, a, lam, omega, seps, int(seed) & 0xFFFFFFFFFFFFFFFF


def check_normalize(normalize: Any, objective: str, alpha: float) -> bool:
    """Validate ``normalize``; True for unit rows. Unit rows need the log-det objective (the
    compatibility objectives' gains are functions of the norms alone: all equal on unit rows) and
    α <= MAX_ALPHA_NORM2 (α‖g‖² of a unit row is α)."""
    if not isinstance(normalize, str) or normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {list(NORMALIZE)}, got {normalize!r}")
    if normalize == "none":
        return False
    if objective != "logdet":
        raise ValueError(
            f"normalize='unit' needs objective='logdet' (here: {objective!r}, whose gains on unit "
            "rows are all equal)"
        )
    if alpha > MAX_ALPHA_NORM2:
        raise ValueError(
            f"alpha = {alpha} with normalize='unit' must be <= {MAX_ALPHA_NORM2:.0e} (a unit "
            "row's alpha * ||g||^2 is alpha; beyond it float64 round-off makes gains noise)"
        )
    return True
