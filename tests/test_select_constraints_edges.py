"""Constraints at the edges of their number types: group labels that a cast to int64 would wrap,
quotas beyond int64, and costs so small (subnormal) that score / cost overflows. Each run is
checked against the same problem in ordinary numbers (the numpy reference, or the core on it)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import spice
from spice.reference import greedy_constrained_reference

TWO63 = 2**63


def rows(seed: int = 0, n: int = 14, d: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) * rng.uniform(0.3, 2.0, (n, 1))


@pytest.mark.parametrize(
    "make",
    [
        lambda a: np.uint64(TWO63) + a.astype(np.uint64),  # wrap to negative under int64
        lambda a: np.uint64(2**64 - 1) - a.astype(np.uint64),  # would all wrap to -1, -2, -3
        lambda a: a.astype(np.int8) - np.int8(127),  # negative labels of a narrow dtype
        lambda a: np.array([10**30 + int(v) for v in a], dtype=object),  # beyond any dtype
        lambda a: np.array(["web", "code", "math"])[a],  # strings
    ],
)
def test_group_labels_of_any_type_are_enforced_exactly(make):
    G = rows()
    dense = np.random.default_rng(1).integers(0, 3, G.shape[0])
    labels = make(dense)
    caps = np.array([1, 2, 0])
    # the user's label of each dense group, as a Python value
    lab = {int(g): labels[np.flatnonzero(dense == g)[0]] for g in range(3)}
    lab = {g: (v.item() if isinstance(v, np.generic) else v) for g, v in lab.items()}
    quotas = {lab[g]: int(caps[g]) for g in range(3)}
    # the oracle numbers groups in sorted-label order; so does np.unique
    order = sorted(range(3), key=lambda g: lab[g])
    ref = greedy_constrained_reference(G, 8, groups=dense, quotas=caps)
    sel = spice.select(G, 8, groups=labels, quotas=quotas)
    np.testing.assert_array_equal(sel.indices, ref.indices)
    assert sel.group_counts == {lab[g]: int(np.sum(dense[sel.indices] == g)) for g in order}
    assert all(sel.group_counts[lab[g]] <= caps[g] for g in range(3))
    assert sum(sel.group_counts.values()) == 3  # every quota binds: 1 + 2 + 0


def test_uint64_labels_with_an_array_of_quotas_and_wrong_key_kinds():
    G = rows()
    labels = np.arange(G.shape[0], dtype=np.uint64) % 2
    sel = spice.select(G, 6, groups=labels, quotas=np.array([1, 2], dtype=np.uint64))
    assert sel.group_counts == {0: 1, 1: 2}
    with pytest.raises(ValueError, match=f"label {TWO63 + 1}"):
        spice.select(G, 6, groups=labels + np.uint64(TWO63), quotas=[1, 2])
    with pytest.raises(TypeError, match="strings here"):
        spice.select(G, 6, groups=np.array(["a", "b"] * 7), quotas={0: 1})
    with pytest.raises(TypeError, match="bytes here"):
        spice.select(G, 6, groups=np.array([b"a", b"b"] * 7), quotas={"a": 1})
    assert (
        spice.select(G, 6, groups=np.array([b"a", b"b"] * 7), quotas={b"a": 1}).group_counts[b"a"]
        == 1
    )
    with pytest.raises(TypeError, match="needs integer group labels"):
        spice.select(G, 6, groups=np.array(["a", "b"] * 7), quotas=[1, 2])
    with pytest.raises(TypeError, match="all integers or all strings"):
        spice.select(G, 6, groups=np.array([1, "a"] * 7, dtype=object), quotas={1: 1})


@pytest.mark.parametrize(
    "big",
    [2**63, 2**70, 10**40, np.uint64(2**64 - 1)],
)
@pytest.mark.parametrize("as_array", [False, True])
def test_quotas_beyond_int64_are_capped_at_k(big, as_array):
    G = rows()
    labels = np.arange(G.shape[0]) % 2
    quotas = (
        np.array([big, 1], dtype=np.uint64 if isinstance(big, np.uint64) else object)
        if as_array
        else {0: big, 1: 1}
    )
    sel = spice.select(G, 7, groups=labels, quotas=quotas)
    same = spice.select(G, 7, groups=labels, quotas={0: 7, 1: 1})
    np.testing.assert_array_equal(sel.indices, same.indices)
    ref = greedy_constrained_reference(G, 7, groups=labels, quotas=[7, 1])
    np.testing.assert_array_equal(sel.indices, ref.indices)


TINY = 2.0**-1074  # the smallest subnormal


@pytest.mark.parametrize("unit", [TINY, 3 * TINY, 2.0**-1030, 1e-307, 2.0**900])
@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_costs_at_the_ends_of_float64_rank_as_in_ordinary_units(unit, lam):
    """Integer costs times a unit: an exact power of two (or a multiple of the smallest
    subnormal, exact too) scaling of cost and budget, which changes no ratio and no sum. The
    picks must be those of the same problem in plain units."""
    G = rows(3, n=16)
    m = np.random.default_rng(4).integers(1, 9, G.shape[0]).astype(np.float64)
    B = 17.0
    cost = m * unit
    if unit != 1e-307:
        assert np.all(cost / unit == m)  # the scaled costs are exact
    ref = greedy_constrained_reference(G, 16, conflict_penalty=lam, cost=m, budget=B)
    plain = spice.select(G, 16, conflict_penalty=lam, budget=B, cost=m)
    sel = spice.select(G, 16, conflict_penalty=lam, budget=B * unit, cost=cost)
    np.testing.assert_array_equal(plain.indices, ref.indices)
    np.testing.assert_array_equal(sel.indices, ref.indices)
    assert len(sel) > 1
    assert sel.logdet == pytest.approx(ref.logdet, rel=1e-9)
    assert sel.tokens == pytest.approx(float(np.sum(cost[sel.indices])), rel=1e-12)
    assert sel.budget == B * unit


def test_a_budget_far_above_tiny_costs_takes_every_row_it_can():
    G = rows(5)
    cost = np.full(G.shape[0], 5 * TINY)
    sel = spice.select(G, budget=1.0, cost=cost)
    free = spice.select(G, G.shape[0])
    np.testing.assert_array_equal(np.sort(sel.indices), np.sort(free.indices))
    assert sel.budget == 1.0 and sel.tokens == 5 * TINY * len(sel)


def test_costs_too_far_apart_are_refused_naming_the_row():
    G = rows()
    cost = np.ones(G.shape[0])
    cost[4] = 1e-200
    with pytest.raises(ValueError, match="cost of row 4 is 1e-200 but the largest cost is 1"):
        spice.select(G, budget=3.0, cost=cost)
    assert math.isfinite(
        spice.select(G, budget=3.0, cost=np.r_[1e-140, np.ones(G.shape[0] - 1)]).logdet
    )
