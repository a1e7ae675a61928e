"""Side constraints of ``spice.select``: a budget on a per-row cost (tokens) and per-group quotas.

The core runs them (csrc/spice/constraints.hpp); this module checks what users pass, turns it
into the arrays the core reads, and states which guarantee a run carries (docs/algorithm.md §11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# (1 - 1/e): greedy under a row count; half of it: the modified cost-benefit greedy under a
# knapsack (Khuller, Moss, Naor 1999; Krause, Guestrin 2005); 1/2: greedy over a matroid
# (Fisher, Nemhauser, Wolsey 1978).
CARDINALITY_FACTOR = 1.0 - math.exp(-1.0)
KNAPSACK_FACTOR = CARDINALITY_FACTOR / 2.0
MATROID_FACTOR = 0.5


@dataclass(frozen=True)
class Constraints:
    """Checked constraints, as the core takes them (all None when there are none).

    cost: float64 (n,), budget: float; groups: int32 (n,) dense group numbers, caps: int64
    (number of groups,) the most picks per group, labels: the user's label of each dense group.
    """

    cost: np.ndarray | None = None
    budget: float | None = None
    groups: np.ndarray | None = None
    caps: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def active(self) -> bool:
        return self.cost is not None or self.groups is not None


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_float(v: Any) -> bool:
    return isinstance(v, (float, np.floating))


def _cap(label: Any, v: Any, k: int, k_given: bool) -> int:
    """A quota value: an int count >= 0, or a float share in (0, 1] of k (at most floor(share k)
    rows)."""
    if _is_int(v):
        if int(v) < 0:
            raise ValueError(f"quota of group {label} is {int(v)}; need a count >= 0")
        return int(v)
    if _is_float(v):
        s = float(v)
        if not (0.0 < s <= 1.0):
            raise ValueError(
                f"quota of group {label} is {s}; a float quota is a share of k, in (0, 1]"
            )
        if not k_given:
            raise ValueError(
                f"quota of group {label} is a share ({s}); a share of k needs k (pass k, or give "
                "quotas as row counts)"
            )
        return int(math.floor(s * k + 1e-9))
    raise TypeError(
        f"quota of group {label} must be an int count or a float share, got {type(v).__name__}"
    )


def check_constraints(
    n: int, k: int, k_given: bool, budget: Any, cost: Any, groups: Any, quotas: Any
) -> Constraints:
    """Validate ``budget``/``cost`` and ``groups``/``quotas`` for n rows and a row cap k
    (``k_given``: the user passed k; else k = n). Raises ValueError/TypeError naming the setting.
    """
    c = b = g = caps = labels = None
    if (budget is None) != (cost is None):
        raise ValueError("budget and cost go together: pass both (cost: one number per row)")
    if budget is not None:
        if isinstance(budget, (bool, np.bool_)) or not isinstance(
            budget, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"budget must be a number, got {type(budget).__name__}")
        b = float(budget)
        if not (math.isfinite(b) and b > 0):
            raise ValueError(f"budget = {b} must be a finite number > 0")
        arr = np.asarray(cost)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(
                f"cost must be {n} numbers, one per row (got shape {arr.shape}, dtype {arr.dtype})"
            )
        c = np.ascontiguousarray(arr, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(c) & (c > 0)))
        if bad.size:
            raise ValueError(
                f"cost of row {int(bad[0])} is {c[bad[0]]}; every cost must be a finite number > 0"
            )
    if (groups is None) != (quotas is None):
        raise ValueError("groups and quotas go together: pass both")
    if groups is not None:
        arr = np.asarray(groups)
        if arr.dtype.kind not in "iu" or arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(
                f"groups must be {n} integer labels, one per row (got shape {arr.shape}, "
                f"dtype {arr.dtype})"
            )
        labels, inv = np.unique(arr.astype(np.int64), return_inverse=True)
        g = np.ascontiguousarray(inv.reshape(-1), dtype=np.int32)
        if isinstance(quotas, dict):
            for key in quotas:
                if not _is_int(key):
                    raise TypeError(f"quota keys are group labels (ints), got {key!r}")
            want = {int(key): v for key, v in quotas.items()}
            caps = np.array(
                [
                    _cap(int(lab), want[int(lab)], k, k_given) if int(lab) in want else k
                    for lab in labels
                ],
                dtype=np.int64,
            )
        else:
            q = np.asarray(quotas)
            if q.ndim != 1 or q.dtype.kind not in "iuf":
                raise TypeError(
                    "quotas must be a dict {label: quota} or a 1-D array indexed by label"
                )
            if labels[0] < 0 or labels[-1] >= q.shape[0]:
                raise ValueError(
                    f"quotas has {q.shape[0]} entries (labels 0..{q.shape[0] - 1}) but groups "
                    f"holds the label {int(labels[0] if labels[0] < 0 else labels[-1])}"
                )
            caps = np.array([_cap(int(lab), q[int(lab)], k, k_given) for lab in labels], np.int64)
        caps = np.ascontiguousarray(np.minimum(caps, k), dtype=np.int64)
    return Constraints(cost=c, budget=b, groups=g, caps=caps, labels=labels)


def guarantee(
    cons: Constraints,
    *,
    lam: float,
    omega: float,
    objective: str,
    method: str,
    stop: str,
    capped: bool,
) -> tuple[float, str]:
    """The a-priori factor a run carries (NaN when none is stated) and a line saying why.

    Only the plain information objective (λ = 0) is monotone submodular; the conflict penalty
    depends on the order of the picks, so no factor is stated with it. ``capped``: the row cap
    k is below n (it can bind).
    """
    nan = float("nan")
    if objective != "logdet":
        return nan, "compatibility objective: no guarantee"
    if method == "stochastic":
        return nan, "stochastic greedy: no deterministic guarantee stated"
    if lam > 0:
        return nan, "conflict penalty λ > 0: the objective is not submodular; no factor stated"
    if not cons.active:
        return CARDINALITY_FACTOR, "greedy, monotone submodular: vs the best set of its size"
    if omega > 0:
        return nan, "early stop ended the run before the constraints did: no factor stated"
    if stop == "cancelled":
        return nan, "cancelled run: no factor stated"
    if cons.cost is not None and cons.groups is not None:
        return nan, "token budget and quotas together: no a-priori factor; see certified_ratio"
    if cons.cost is not None:
        if stop == "budget" and capped:
            return nan, "the row cap k bound as well as the token budget: see certified_ratio"
        return KNAPSACK_FACTOR, "modified cost-benefit greedy (best single row kept): knapsack"
    return MATROID_FACTOR, "greedy over a partition matroid (quotas, at most k rows)"
