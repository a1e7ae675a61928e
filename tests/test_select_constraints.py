"""Token budget and source quotas (docs/algorithm.md §11): the core against the numpy reference,
brute force on small instances, naive == lazy, and the checks on what users pass."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spice
from spice.constraints import KNAPSACK_FACTOR, MATROID_FACTOR
from spice.reference import greedy_constrained_reference

from helpers import assert_same
from select_data import clustered

SETTINGS = settings(max_examples=40, deadline=None)
MODES = ("budget", "quotas", "both")


def instance(seed: int, n: int, d: int, groups: int = 3):
    """Rows, integer token costs (sums are exact), a budget, group labels and caps."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d)) * rng.uniform(0.2, 2.0, (n, 1))
    cost = rng.integers(1, 10, n).astype(np.float64)
    budget = float(rng.integers(1, int(cost.sum()) + 2))
    labels = rng.integers(0, groups, n)
    caps = rng.integers(0, 4, groups)
    return G, cost, budget, labels, caps


def kwargs(mode, cost, budget, labels, caps):
    kw = {}
    if mode in ("budget", "both"):
        kw.update(budget=budget, cost=cost)
    if mode in ("quotas", "both"):
        kw.update(groups=labels, quotas=caps)
    return kw


def reference(G, k, mode, cost, budget, labels, caps, **kw):
    on_cost = mode in ("budget", "both")
    on_groups = mode in ("quotas", "both")
    return greedy_constrained_reference(
        G,
        k,
        cost=cost if on_cost else None,
        budget=budget if on_cost else None,
        groups=labels if on_groups else None,
        quotas=caps if on_groups else None,
        **kw,
    )


def logdet(G, S, alpha=1.0):
    S = list(S)
    if not S:
        return 0.0
    return float(np.linalg.slogdet(np.eye(len(S)) + alpha * G[S] @ G[S].T)[1])


def feasible(S, k, mode, cost, budget, labels, caps):
    if len(S) > k:
        return False
    if mode in ("budget", "both") and cost[list(S)].sum() > budget:
        return False
    if mode in ("quotas", "both"):
        counts = np.bincount(labels[list(S)], minlength=caps.size)
        if np.any(counts > caps):
            return False
    return True


def brute_force_opt(G, k, mode, cost, budget, labels, caps):
    n = G.shape[0]
    best = 0.0
    for r in range(1, n + 1):
        for S in itertools.combinations(range(n), r):
            if feasible(S, k, mode, cost, budget, labels, caps):
                best = max(best, logdet(G, S))
    return best


def check_feasible(sel, k, mode, cost, budget, labels, caps):
    idx = sel.indices
    assert len(idx) <= k
    assert len(set(idx.tolist())) == len(idx)
    if mode in ("budget", "both"):
        assert sel.tokens == pytest.approx(float(cost[idx].sum()), rel=1e-12, abs=0)
        assert math.fsum(cost[idx]) <= budget
    if mode in ("quotas", "both"):
        counts = np.bincount(labels[idx], minlength=caps.size)
        assert np.all(counts <= caps), (counts, caps)
        assert sel.group_counts == {g: int(c) for g, c in enumerate(counts) if g in set(labels)}


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 10),
    d=st.integers(1, 6),
    mode=st.sampled_from(MODES),
    lam=st.sampled_from([0.0, 0.1, 1.0]),
    omega=st.sampled_from([None, 0.4]),
    method=st.sampled_from(["naive", "lazy"]),
    capped=st.booleans(),
)
def test_core_matches_reference(seed, n, d, mode, lam, omega, method, capped):
    """Pick for pick the numpy reference (Δ by a linear solve each step): ratio ranking,
    feasibility, stop reason, early stop per unit cost and the single-row safeguard."""
    G, cost, budget, labels, caps = instance(seed, n, d)
    k = max(1, n // 2) if capped else n
    kw = kwargs(mode, cost, budget, labels, caps)
    sel = spice.select(G, k, conflict_penalty=lam, early_stop=omega, method=method, **kw)
    assert_same(
        sel,
        reference(G, k, mode, cost, budget, labels, caps, conflict_penalty=lam, early_stop=omega),
    )
    check_feasible(sel, k, mode, cost, budget, labels, caps)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 10),
    d=st.integers(1, 5),
    mode=st.sampled_from(MODES),
)
def test_within_the_stated_guarantee_of_brute_force(seed, n, d, mode):
    """λ = 0, no early stop: F(S) >= factor · OPT where a factor is stated, the a-posteriori bound
    is above OPT (the best feasible set, by enumeration), and OPT >= F(S)."""
    G, cost, budget, labels, caps = instance(seed, n, d)
    kw = kwargs(mode, cost, budget, labels, caps)
    # the row cap: not binding for the budget alone (its factor needs that), binding for quotas
    k = n if mode == "budget" else max(1, n - 2)
    sel = spice.select(G, k, conflict_penalty=0.0, method="lazy", **kw)
    opt = brute_force_opt(G, k, mode, cost, budget, labels, caps)
    assert sel.logdet <= opt + 1e-9
    assert opt <= sel.opt_upper_bound + 1e-9
    if mode == "budget":
        assert sel.guarantee == KNAPSACK_FACTOR
    elif mode == "quotas":
        assert sel.guarantee == MATROID_FACTOR
    else:
        assert math.isnan(sel.guarantee)
    if math.isfinite(sel.guarantee):
        assert sel.logdet >= sel.guarantee * opt - 1e-9
    assert sel.certified_ratio <= sel.logdet / opt + 1e-9 if opt > 0 else True


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 10),
    d=st.integers(1, 5),
    mode=st.sampled_from(MODES),
    lam=st.sampled_from([0.0, 0.5]),
    eps=st.sampled_from([0.01, 0.5, 0.9]),
)
def test_stochastic_stays_feasible(seed, n, d, mode, lam, eps):
    G, cost, budget, labels, caps = instance(seed, n, d)
    cost = cost * 0.37  # fractional costs: the budget test is on float64 sums in pick order
    budget = budget * 0.37
    kw = kwargs(mode, cost, budget, labels, caps)
    sel = spice.select(G, n, conflict_penalty=lam, method="stochastic", stochastic_eps=eps, **kw)
    idx = sel.indices
    if mode != "quotas":
        spent = 0.0
        for i in idx:
            spent += cost[i]
        assert spent == sel.tokens and spent <= budget
    if mode != "budget":
        assert np.all(np.bincount(labels[idx], minlength=caps.size) <= caps)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lam", [0.0, 0.2])
def test_naive_equals_lazy_bit_for_bit(mode, lam):
    """Larger instances than brute force can check; k > d, so lazy's M⁻¹ bounds run too; batch and
    chunk sizes vary. The stochastic method with a sample of every row is naive greedy too."""
    from spice import _core
    from spice._inputs import as_features

    n, d = 700, 10
    G = clustered(5, n, d)
    rng = np.random.default_rng(1)
    cost = rng.integers(20, 400, n).astype(np.float64)
    labels = rng.integers(0, 4, n)
    kw = kwargs(mode, cost, 0.5 * cost.sum(), labels, np.array([40, 200, 5, 400]))
    naive = spice.select(G, 500, conflict_penalty=lam, method="naive", **kw)
    lazy = spice.select(G, 500, conflict_penalty=lam, method="lazy", **kw)
    full = spice.select(
        G, 500, conflict_penalty=lam, method="stochastic", stochastic_eps=1e-300, **kw
    )
    assert len(naive) > 2 * d
    for other in (lazy, full):
        np.testing.assert_array_equal(other.indices, naive.indices)
        np.testing.assert_array_equal(other.gains, naive.gains)
        np.testing.assert_array_equal(other.scores, naive.scores)
        assert other.stop_reason == naive.stop_reason
    A, code = as_features(G)
    c = None if mode == "quotas" else cost
    g = q = None
    if mode != "budget":
        g, q = labels.astype(np.int32), np.array([40, 200, 5, 400], dtype=np.int64)
    budget = 0.5 * cost.sum() if c is not None else 0.0
    for batch, chunk in ((1, 0), (3, 1), (64, 7)):
        opts = _core.Options(k=500, conflict_penalty=lam, batch=batch, chunk=chunk, budget=budget)
        r = _core.select(A, code, opts, cost=c, groups=g, quotas=q)
        np.testing.assert_array_equal(r["indices"], naive.indices)
        np.testing.assert_array_equal(r["gains"], naive.gains)


@pytest.mark.parametrize("method", ["naive", "lazy", "stochastic"])
def test_unit_costs_and_loose_quotas_change_nothing(method):
    """Cost 1 per row under a budget of k rows, or one group capped at k: the picks and gains of
    the plain run, bit for bit (λ = 0: the penalised sum never falls below the first pick, so
    the safeguard keeps the set)."""
    G = clustered(2, 300, 12)
    k = 40
    plain = spice.select(G, k, conflict_penalty=0.0, method=method, stochastic_eps=0.3)
    for kw in (
        dict(budget=k, cost=np.ones(300)),
        dict(groups=np.zeros(300, dtype=int), quotas={0: k}),
    ):
        sel = spice.select(G, k, conflict_penalty=0.0, method=method, stochastic_eps=0.3, **kw)
        np.testing.assert_array_equal(sel.indices, plain.indices)
        np.testing.assert_array_equal(sel.gains, plain.gains)


def test_the_single_row_safeguard_is_what_keeps_the_guarantee():
    """One large row costing the whole budget against many cheap small ones with a better gain per
    token: cost-benefit greedy alone fills the budget with small rows and ends far below (1−1/e)/2
    of the optimum; the safeguard returns the large row."""
    n, d = 9, 8
    G = np.zeros((n, d))
    G[0, 0] = 30.0  # log(1 + 900) ≈ 6.8 for 100 tokens
    for i in range(1, n):
        G[i, 1] = 0.4  # every small row lies on one axis: log det of m of them = log(1 + 0.16 m)
    cost = np.array([100.0] + [1.0] * (n - 1))
    budget = 100.0
    opt = brute_force_opt(G, n, "budget", cost, budget, None, None)
    plain = greedy_constrained_reference(G, n, cost=cost, budget=budget, safeguard=False)
    assert plain.logdet < KNAPSACK_FACTOR * opt  # without the safeguard the factor fails
    for method in ("naive", "lazy", "stochastic"):
        sel = spice.select(G, budget=budget, cost=cost, conflict_penalty=0.0, method=method)
        np.testing.assert_array_equal(sel.indices, [0])
        assert sel.safeguard and sel.tokens == 100.0
        assert sel.logdet >= KNAPSACK_FACTOR * opt
        assert "single row" in sel.summary()
        # the bound is the greedy set's: F(cheap rows) + the knapsack LP over what is left (the
        # large row, whole), so it stays above OPT although the greedy set is far below it
        assert opt <= sel.opt_upper_bound + 1e-12


def test_budget_alone_and_stop_reasons():
    G = clustered(4, 200, 16)
    cost = np.random.default_rng(0).integers(50, 500, 200).astype(float)
    sel = spice.select(G, budget=5000, cost=cost)
    assert sel.k == 200 and sel.stop_reason == "filled"
    assert sel.tokens <= 5000 and not np.any(
        cost[~np.isin(np.arange(200), sel.indices)] <= 5000 - sel.tokens
    )
    capped = spice.select(G, 3, budget=5000, cost=cost)
    assert len(capped) == 3 and capped.stop_reason == "budget" and math.isnan(capped.guarantee)
    d = sel.to_dict()
    assert d["constraints"]["tokens"] == sel.tokens and d["constraints"]["budget"] == 5000
    json.dumps(d)
    assert "tokens:" in sel.summary()
    quota = spice.select(G, 50, groups=np.arange(200) % 4, quotas={0: 2, 1: 0.1, 3: 0})
    assert quota.group_counts == {0: 2, 1: 5, 2: 43, 3: 0} and quota.stop_reason == "budget"
    full = spice.select(G, 50, groups=np.arange(200) % 2, quotas=[3, 4])
    assert len(full) == 7 and full.stop_reason == "filled"


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(budget=10.0), "budget and cost go together"),
        (dict(cost=np.ones(20)), "budget and cost go together"),
        (dict(budget=10.0, cost=np.ones(19)), "cost must be 20 numbers"),
        (dict(budget=10.0, cost=np.r_[np.ones(19), 0.0]), "cost of row 19"),
        (dict(budget=10.0, cost=np.r_[np.nan, np.ones(19)]), "cost of row 0"),
        (dict(budget=-1.0, cost=np.ones(20)), "budget = -1.0"),
        (dict(budget=math.inf, cost=np.ones(20)), "budget = inf"),
        (dict(groups=np.zeros(20, int)), "groups and quotas go together"),
        (dict(groups=np.zeros(20), quotas={0: 1}), "integer labels"),
        (dict(groups=np.arange(20) % 3, quotas=[1, 2]), "label 2"),
        (dict(groups=np.zeros(20, int), quotas={0: -1}), "need a count >= 0"),
        (dict(groups=np.zeros(20, int), quotas={0: 1.5}), "share of k, in"),
        (dict(groups=np.zeros(20, int), quotas={0: True}), "int count or a float share"),
        (dict(budget=10.0, cost=np.ones(20), objective="topk-compat"), "log-det objective"),
    ],
)
def test_bad_constraints_are_refused(kw, err):
    G = clustered(1, 20, 4)
    with pytest.raises((ValueError, TypeError), match=err):
        spice.select(G, 5, **kw)


def test_k_is_needed_without_a_budget_and_shares_need_k():
    G = clustered(1, 20, 4)
    with pytest.raises(TypeError, match="needs k"):
        spice.select(G)
    with pytest.raises(ValueError, match="needs k"):
        spice.select(G, budget=5.0, cost=np.ones(20), groups=np.zeros(20, int), quotas={0: 0.5})


def test_cli_budget_tokens(tmp_path, capsys):
    """spice select --budget-tokens: costs from the store's token counts, the summary and
    selection.json show tokens, the subset respects the budget."""
    from spice.cli import main
    from spice.store import StoreWriter

    n, d = 40, 6
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) + "\n"
            for i in range(n)
        )
    )
    tokens = 5 + (np.arange(n) * 7) % 23
    w = StoreWriter(
        tmp_path / "store",
        {"data": {"records": n}},
        total_rows=n,
        dim=d,
        dtype="float32",
        shard_rows=64,
    )
    w.prepare()
    rows = [
        {
            "row": r,
            "id": f"id{r}",
            "tokens": int(tokens[r]),
            "loss_tokens": 2,
            "loss": 1.0,
            "flags": [],
        }
        for r in range(n)
    ]
    w.write_chunk(0, clustered(7, n, d), rows)
    w.finalize()
    out = tmp_path / "sel"
    rc = main(
        ["select", "--features", str(tmp_path / "store"), "--data", str(data),
         "--budget-tokens", "100", "--penalty", "0", "--out", str(out)]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tokens:" in printed and "of a budget of 100" in printed
    sel = json.loads((out / "selection.json").read_text())
    idx = np.asarray(sel["indices"])
    assert sel["constraints"]["tokens"] == float(tokens[idx].sum()) <= 100
    assert sel["config"]["budget_tokens"] == 100 and sel["k"] == n
    assert math.isclose(sel["guarantee"], KNAPSACK_FACTOR)
    ref = spice.select(
        np.load(tmp_path / "store" / "features.npy"),
        budget=100,
        cost=tokens.astype(float),
        conflict_penalty=0,
    )
    np.testing.assert_array_equal(idx, ref.indices)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    from spice.report import make_report

    report = make_report(out)["report"].read_text()
    assert f"tokens: **{sel['constraints']['tokens']:.10g}** of a budget of 100" in report
