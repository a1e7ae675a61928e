"""``SelectOptions``: the settings of one selection, each declared once.

A field carries its default, its domain and a one-line help (with units) in its metadata;
``SelectOptions.__post_init__`` checks every field against its domain, and the ``spice select``
and ``spice run`` flags are made from the same fields (:func:`spice.cli`), so a setting's name,
default, range and help live here and nowhere else. The row count ``k`` and the side constraints
(:class:`spice.Constraints`) are not settings: they belong to the call.

The backends that take settings as loose keywords (``spice.distributed``, the GPU path) check
them through ``check_options`` and ``resolve_k`` here. numpy only, and no spice module above it:
``selection`` and ``gpu`` both import from here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ._flags import field_doc
from ._flags import setting as _setting
from ._numerics import MAX_ALPHA_NORM2

METHODS = ("naive", "lazy", "stochastic")
OBJECTIVES = ("logdet", "diag-compat", "topk-compat")
NORMALIZE = ("none", "unit")


def check_number(
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


def _checked(name: str, v: Any, meta: Any) -> Any:
    """A field's value checked against its metadata (see :func:`_setting`), as stored."""
    if v is None and meta["optional"]:
        return None
    kind, choices = meta["kind"], meta["choices"]
    if kind is float:
        return check_number(name, v, meta["lo"], meta["lo_open"], meta["hi"], meta["hi_open"])
    if kind is int:
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        if meta["lo"] is None:
            if not ok:
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        elif not (ok and v >= meta["lo"]):
            want = "a positive int" if meta["lo"] == 1 else f"an int >= {meta['lo']}"
            raise ValueError(
                f"{name} must be {want}{' or None' if meta['optional'] else ''}, got {v!r}"
            )
        return int(v)
    if choices is not None:
        if not isinstance(v, str) or v not in choices:
            raise ValueError(f"{name} must be one of {sorted(choices)}, got {v!r}")
        return v
    if name == "spill_dir":
        if not isinstance(v, (str, os.PathLike)):
            raise TypeError(f"spill_dir must be a path or None, got {type(v).__name__}")
        return os.fspath(v)
    if not isinstance(v, (bool, np.bool_)):  # bf16
        raise TypeError(f"{name} must be True or False, got {type(v).__name__}")
    return bool(v)


@dataclass(frozen=True)
class SelectOptions:
    """The settings of one selection (:func:`spice.select`), checked when made.

    Raises ValueError or TypeError naming the setting and what it must be. Fields (defaults in
    brackets) are listed below; ``dataclasses.replace(opts, alpha=2.0)`` makes a changed copy,
    checked again.
    """

    alpha: float = _setting(
        1.0,
        "α in log det(I + α Σ g gᵀ): the Fisher scale, a finite number > 0 (unitless, it "
        "multiplies ‖g‖²)",
        kind=float,
        lo=0,
        lo_open=True,
        flag="--alpha",
    )
    conflict_penalty: float = _setting(
        0.1,
        "conflict penalty λ >= 0: nats of log-det gain taken off per unit of conflict "
        "max(0, -cos) to the earlier picks' mean (0: plain log-det greedy)",
        kind=float,
        lo=0,
        flag="--conflict-penalty",
        aliases=("--penalty",),
    )
    early_stop: float | None = _setting(
        None,
        "SPICE+: stop before a pick whose gain is at most ω × the first pick's, ω in (0, 1) "
        "(unset: no early stop)",
        kind=float,
        lo=0,
        hi=1,
        lo_open=True,
        hi_open=True,
        optional=True,
        flag="--early-stop",
    )
    method: str = _setting(
        "lazy",
        "greedy variant: lazy and naive pick the same rows; stochastic scores a seeded sample "
        "of rows a step",
        choices=METHODS,
        flag="--method",
    )
    seed: int = _setting(
        0,
        "seed of the stochastic method, any int (reduced to 64 bits); results repeat exactly",
        kind=int,
    )
    threads: int | None = _setting(
        None,
        "OpenMP threads, an int >= 1 (unset: the CPUs other processes leave free, looked at "
        "again every 0.25 s); results do not depend on it",
        kind=int,
        lo=1,
        optional=True,
    )
    objective: str = _setting(
        "logdet",
        "logdet: the paper's; diag-compat and topk-compat reproduce the authors' released code",
        choices=OBJECTIVES,
        flag="--objective",
    )
    stochastic_eps: float = _setting(
        0.01,
        "ε of the stochastic method, in (0, 1): it scores ⌈(n/k)·ln(1/ε)⌉ rows a step",
        kind=float,
        lo=0,
        hi=1,
        lo_open=True,
        hi_open=True,
    )
    normalize: str = _setting(
        "none",
        "unit: select on rows scaled to norm 1 (directions only; large-norm noise no longer "
        "wins); logdet only",
        choices=NORMALIZE,
        flag="--normalize",
    )
    bf16: bool = _setting(
        False, "read a uint16 G as raw bfloat16 (2 bytes per entry) instead of integers"
    )
    spill_dir: str | None = _setting(
        None,
        "keep the run's w rows (k x d float64, 8 bytes each) in a temporary file in this "
        "directory instead of RAM (same results; unset: RAM)",
        optional=True,
        flag="--spill-dir",
    )

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the checked values replace what was given
        for f in fields(self):
            put(self, f.name, _checked(f.name, getattr(self, f.name), f.metadata))
        check_normalize(self.normalize, self.objective, self.alpha)

    @property
    def seed64(self) -> int:
        """The seed as the core takes it: reduced to 64 bits."""
        return self.seed & 0xFFFFFFFFFFFFFFFF

    @property
    def core_early_stop(self) -> float:
        """``early_stop`` as the core takes it: 0.0 when off."""
        return 0.0 if self.early_stop is None else self.early_stop


def setting_names() -> tuple[str, ...]:
    """The names of :class:`SelectOptions`' fields, in order."""
    return tuple(f.name for f in fields(SelectOptions))


SelectOptions.__doc__ = (SelectOptions.__doc__ or "") + field_doc(SelectOptions)


class _Default:
    """The default of :func:`spice.select`'s setting keywords: SelectOptions' own default. A
    marker rather than the value, so that a setting passed beside ``options=`` is noticed even
    when it equals the default."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<SelectOptions default>"


DEFAULT: Any = _Default()


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
    """Validate the settings of a selection over n rows, for the backends that take them as
    loose keywords (checked by :class:`SelectOptions`).

    Returns ``(k, alpha, conflict_penalty, early_stop, stochastic_eps, seed)``: k a count in
    [0, n], early_stop 0 when off, seed reduced to 64 bits. Raises ValueError/TypeError naming
    the setting.
    """
    o = SelectOptions(
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
        method=method,
        objective=objective,
        stochastic_eps=stochastic_eps,
        seed=seed,
    )
    return (
        resolve_k(k, n),
        o.alpha,
        o.conflict_penalty,
        o.core_early_stop,
        o.stochastic_eps,
        o.seed64,
    )
