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


@dataclass(frozen=True, eq=False)
class Constraints:
    """Side constraints of a selection, as given to :func:`spice.select` (all None: none).

    The pairs that go together and the budget's value are checked when made; the per-row arrays
    are checked against the data's n rows and k picks when the selection runs
    (:meth:`for_rows`). Raises ValueError or TypeError naming the setting.
    """

    budget: float | None = None
    """The most the picks' summed ``cost`` may reach, a finite number > 0 (the unit of cost,
    e.g. tokens); with ``cost``."""
    cost: Any = None
    """n positive finite numbers, the cost of each row (e.g. its tokens); with ``budget``."""
    groups: Any = None
    """n labels (integers of any dtype, or strings), the group of each row; with ``quotas``."""
    quotas: Any = None
    """The most picks per group: a dict {label: quota} (labels not in it: no cap) or an array
    indexed by integer label; a quota is an int count, or a float share in (0, 1] of k (at most
    floor(share * k) rows). With ``groups``."""

    def __post_init__(self) -> None:
        if (self.budget is None) != (self.cost is None):
            raise ValueError("budget and cost go together: pass both (cost: one number per row)")
        if self.budget is not None:
            b = self.budget
            if isinstance(b, (bool, np.bool_)) or not isinstance(
                b, (int, float, np.integer, np.floating)
            ):
                raise TypeError(f"budget must be a number, got {type(b).__name__}")
            if not (math.isfinite(float(b)) and float(b) > 0):
                raise ValueError(f"budget = {float(b)} must be a finite number > 0")
        if (self.groups is None) != (self.quotas is None):
            raise ValueError("groups and quotas go together: pass both")

    @property
    def active(self) -> bool:
        """Whether there is any constraint (a budget or quotas)."""
        return self.cost is not None or self.groups is not None

    def for_rows(self, n: int, k: int, k_given: bool = True) -> CoreConstraints:
        """These constraints checked for n rows and a row cap k (``k_given``: the caller passed
        k; else k = n and a quota cannot be a share of it), as the core takes them."""
        return check_constraints(n, k, k_given, self.budget, self.cost, self.groups, self.quotas)


@dataclass(frozen=True, eq=False)
class CoreConstraints:
    """Checked constraints, as the core takes them (all None when there are none).

    cost: float64 (n,) and budget: float, both in the core's units: the user's divided by
    ``cost_scale``, a power of two (exact) that brings the largest cost into [0.5, 1), so that
    score / cost and score * cost stay normal floats; ``budget_given``: the user's budget.
    groups: int32 (n,) dense group numbers, quotas: int64 (number of groups,) the most picks per
    group (at most k), labels: the user's label of each dense group (their dtype, sorted).
    """

    cost: np.ndarray | None = None
    budget: float | None = None
    groups: np.ndarray | None = None
    quotas: np.ndarray | None = None
    labels: np.ndarray | None = None
    cost_scale: float = 1.0
    budget_given: float | None = None

    @property
    def active(self) -> bool:
        return self.cost is not None or self.groups is not None


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_float(v: Any) -> bool:
    return isinstance(v, (float, np.floating))


def _cap(label: Any, v: Any, k: int, k_given: bool) -> int:
    """A quota value: an int count >= 0 (of any size: a quota above k is k), or a float share in
    (0, 1] of k (at most floor(share k) rows)."""
    if _is_int(v):
        if int(v) < 0:
            raise ValueError(f"quota of group {label!r} is {int(v)}; need a count >= 0")
        return min(int(v), k)
    if _is_float(v):
        s = float(v)
        if not (0.0 < s <= 1.0):
            raise ValueError(
                f"quota of group {label!r} is {s}; a float quota is a share of k, in (0, 1]"
            )
        if not k_given:
            raise ValueError(
                f"quota of group {label!r} is a share ({s}); a share of k needs k (pass k, or give "
                "quotas as row counts)"
            )
        return int(math.floor(s * k + 1e-9))
    raise TypeError(
        f"quota of group {label!r} must be an int count or a float share, got {type(v).__name__}"
    )


def _item(v: Any) -> Any:
    """A numpy scalar as the Python number it holds (an int stays exact at any size)."""
    return v.item() if isinstance(v, np.generic) else v


# Costs are brought to the largest in [0.5, 1); the smallest may then be down to 2**-MIN_COST_EXP.
# Scores are at most about 28 (log(1 + 1e12)) in size, so score / cost and score * cost stay far
# from overflow and from subnormals, and the cost-benefit ranking keeps every bit.
MIN_COST_EXP = 500


def _rescale_costs(c: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
    """Costs and budget divided by one power of two (exact: only the exponent changes), chosen so
    that the largest cost lies in [0.5, 1). Without it, subnormal costs overflow score / cost to
    inf and every row ties. Returns (costs, budget, scale) with user units = core units * scale.

    A budget above twice the summed costs cannot bind (any partial sum, rounded in any order,
    stays below it), so it is lowered to that before scaling, which keeps it finite.
    """
    e = math.frexp(float(c.max()))[1]
    tiny = int(np.argmin(c))
    if math.frexp(float(c[tiny]))[1] < e - MIN_COST_EXP:
        raise ValueError(
            f"cost of row {tiny} is {c[tiny]:.6g} but the largest cost is {c.max():.6g}: costs "
            f"more than 2**{MIN_COST_EXP} (about 1e150) apart cannot be ranked per unit cost in "
            "float64; give costs in one unit (e.g. tokens)"
        )
    total = float(np.sum(c))
    if b > 2.0 * total:
        b = 2.0 * total
    return np.ldexp(c, -e), math.ldexp(b, -e), math.ldexp(1.0, e)


def _dense_groups(groups: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct labels, dense code of each row) for labels of any integer dtype, Python
    ints of any size, or strings: np.unique on the labels as given, so no label wraps or merges
    with another (a cast to int64 would turn 2**63 into -2**63)."""
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"groups must be {n} labels, one per row (got shape {arr.shape}, dtype {arr.dtype})"
        )
    if arr.dtype.kind == "O":
        vals = arr.tolist()
        if not (all(_is_int(v) for v in vals) or all(isinstance(v, str) for v in vals)):
            kinds = sorted({type(v).__name__ for v in vals})
            raise TypeError(
                f"group labels must be all integers or all strings, got {', '.join(kinds)}"
            )
        arr = np.array([_item(v) for v in vals], dtype=object)
    elif arr.dtype.kind not in "iuUS":
        raise ValueError(
            f"groups must be {n} integer labels (or strings), one per row (got dtype {arr.dtype})"
        )
    labels, inv = np.unique(arr, return_inverse=True)
    return labels, inv.reshape(-1)


def _quota_dict(quotas: dict, labels: np.ndarray) -> dict:
    """A quota dict keyed by Python values (numpy scalars unwrapped), each key checked against the
    kind of the labels: a key of another kind (an int for string labels, a str for bytes labels)
    could never match, and its quota would silently not apply."""
    first = labels.tolist()[0] if labels.size else 0
    kind, ok = (
        ("bytes", lambda x: isinstance(x, bytes))
        if isinstance(first, bytes)
        else ("strings", lambda x: isinstance(x, str))
        if isinstance(first, str)
        else ("ints", _is_int)
    )
    want = {}
    for key, v in quotas.items():
        key = _item(key)
        if not ok(key):
            raise TypeError(f"quota keys are group labels ({kind} here), got {key!r}")
        want[key] = v
    return want


def check_constraints(
    n: int, k: int, k_given: bool, budget: Any, cost: Any, groups: Any, quotas: Any
) -> CoreConstraints:
    """Validate ``budget``/``cost`` and ``groups``/``quotas`` for n rows and a row cap k
    (``k_given``: the user passed k; else k = n). Raises ValueError/TypeError naming the setting.
    """
    c = b = g = group_quotas = labels = None
    scale = 1.0
    Constraints(budget, cost, groups, quotas)  # the pairs and the budget's value
    if budget is not None:
        b = float(budget)
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
        c, b, scale = _rescale_costs(c, b)
    if groups is not None:
        labels, inv = _dense_groups(groups, n)
        g = np.ascontiguousarray(inv, dtype=np.int32)
        if isinstance(quotas, dict):
            want = _quota_dict(quotas, labels)
            group_quotas = np.array(
                [_cap(lab, want[lab], k, k_given) if lab in want else k for lab in labels.tolist()],
                dtype=np.int64,
            )
        else:
            q = np.asarray(quotas)
            if q.ndim != 1 or q.dtype.kind not in "iufO":
                raise TypeError(
                    "quotas must be a dict {label: quota} or a 1-D array indexed by label"
                )
            if labels.dtype.kind not in "iu" and not all(_is_int(v) for v in labels.tolist()):
                raise TypeError(
                    "quotas as an array is indexed by label, so it needs integer group labels; "
                    "with other labels pass a dict {label: quota}"
                )
            lo, hi = labels.tolist()[0], labels.tolist()[-1]  # Python ints: no wrap, any size
            if lo < 0 or hi >= q.shape[0]:
                raise ValueError(
                    f"quotas has {q.shape[0]} entries (labels 0..{q.shape[0] - 1}) but groups "
                    f"holds the label {lo if lo < 0 else hi}"
                )
            group_quotas = np.array(
                [_cap(lab, _item(q[lab]), k, k_given) for lab in labels.tolist()], np.int64
            )
        group_quotas = np.ascontiguousarray(np.minimum(group_quotas, k), dtype=np.int64)
    return CoreConstraints(
        cost=c,
        budget=b,
        groups=g,
        quotas=group_quotas,
        labels=labels,
        cost_scale=scale,
        budget_given=None if budget is None else float(budget),
    )


def guarantee(
    cons: Constraints | CoreConstraints,
    *,
    conflict_penalty: float | None = None,
    early_stop: float | None = None,
    objective: str,
    method: str,
    stop: str,
    capped: bool,
) -> tuple[float, str]:
    """The a-priori factor a run carries (NaN when none is stated) and a line saying why.

    Only the plain information objective (λ = 0) is monotone submodular; the conflict penalty
    depends on the order of the picks, so no factor is stated with it. ``early_stop``: ω, None
    or 0 when off. ``capped``: the row cap k is below n (it can bind).
    """
    conflict_penalty = conflict_penalty or 0.0
    early_stop = early_stop or 0.0
    nan = float("nan")
    if objective != "logdet":
        return nan, "compatibility objective: no guarantee"
    if method == "stochastic":
        return nan, "stochastic greedy: no deterministic guarantee stated"
    if conflict_penalty > 0:
        return nan, "conflict penalty λ > 0: the objective is not submodular; no factor stated"
    if not cons.active:
        return CARDINALITY_FACTOR, "greedy, monotone submodular: vs the best set of its size"
    if early_stop > 0:
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
