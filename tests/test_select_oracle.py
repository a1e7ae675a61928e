"""The core against brute-force oracles: picks, gains, log-det, certificates."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spice
from spice.reference import dpp_map_greedy, greedy_reference

from helpers import assert_same
from select_data import clustered, gaussian

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(2, 40),
    d=st.integers(1, 12),
    lam=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    omega=st.sampled_from([None, 0.3, 0.6]),
    alpha=st.sampled_from([0.1, 1.0, 5.0]),
    method=st.sampled_from(["naive", "lazy"]),
)
def test_matches_reference_greedy(seed, n, d, lam, omega, alpha, method):
    G = gaussian(seed, n, d)
    k = min(n, 1 + seed % n)
    sel = spice.select(G, k, alpha=alpha, conflict_penalty=lam, early_stop=omega, method=method)
    assert_same(sel, greedy_reference(G, k, alpha=alpha, conflict_penalty=lam, early_stop=omega))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31), lam=st.sampled_from([0.0, 0.3]))
def test_matches_slogdet_brute_force(seed, lam):
    G = gaussian(seed, 14, 5)
    sel = spice.select(G, 6, alpha=0.7, conflict_penalty=lam, method="lazy")
    ref = greedy_reference(G, 6, alpha=0.7, conflict_penalty=lam, gain="slogdet")
    assert_same(sel, ref, rtol=1e-8, atol=1e-10)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    lam=st.sampled_from([0.0, 0.1, 1.0]),
    omega=st.sampled_from([None, 0.2, 0.5]),
)
def test_naive_equals_lazy_on_clustered_data(seed, lam, omega):
    G = clustered(seed, 300, 16)
    a = spice.select(G, 60, conflict_penalty=lam, early_stop=omega, method="naive")
    b = spice.select(G, 60, conflict_penalty=lam, early_stop=omega, method="lazy")
    assert_same(b, a, rtol=0, atol=0)  # bit-identical arithmetic
    assert b.evaluations <= a.evaluations


@pytest.mark.parametrize(
    "n,d,k,dtype",
    [
        (400, 24, 80, np.float32),
        (700, 10, 400, np.float32),
        (300, 83, 150, np.float32),
        (300, 83, 150, np.float16),
        (900, 520, 800, np.float32),
        (500, 4096, 120, np.float16),
        (500, 4096, 120, np.float32),
    ],
)
def test_lazy_batch_and_chunk_sizes_do_not_change_picks(n, d, k, dtype):
    """Partial catch-ups (small chunks end on a grid of steps), refresh tiles that mix
    candidates many steps apart (tiles of 1 to 6 rows against up to 32 w rows, each its own
    register-tile shape), k > d (M^{-1} bounds; from d = 512 from its upper triangle), and from
    d = 4096 refreshes whose W chunks are shared by all tiles (products buffered, then applied
    in ascending s): picks and gains bit-identical to naive greedy."""
    from spice import _core
    from spice._inputs import as_features

    G, code = as_features(clustered(3, n, d).astype(dtype))
    naive = _core.select(G, code, _core.Options(k=k, conflict_penalty=0.1, method="naive"))
    runs = [
        _core.select(G, code, _core.Options(k=k, conflict_penalty=0.1, batch=batch, chunk=chunk))
        for batch, chunk in ((1, 0), (3, 1), (64, 7), (5, 100), (0, 0), (0, 10**9))
    ]
    for r in runs:
        np.testing.assert_array_equal(r["indices"], naive["indices"])
        np.testing.assert_array_equal(r["gains"], naive["gains"])
        np.testing.assert_array_equal(r["scores"], naive["scores"])


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_lazy_batches_stay_near_one_at_a_time_work(lam):
    """Lazy greedy pops candidates in batches (for the cores); the batch is sized by what the
    previous step had to look at. Sizing it by everything refreshed fed back on itself (18-20x
    the evaluations of one-at-a-time lazy greedy here, k > d): stay within 2x of it."""
    from spice import _core
    from spice._inputs import as_features

    G, code = as_features(clustered(3, 3000, 64))
    one, auto = (
        _core.select(G, code, _core.Options(k=300, conflict_penalty=lam, batch=batch))
        for batch in (1, 0)
    )
    np.testing.assert_array_equal(auto["indices"], one["indices"])
    assert auto["evaluations"] <= 2 * one["evaluations"]


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(2, 30), d=st.integers(1, 10))
def test_logdet_equals_slogdet(seed, n, d):
    G = gaussian(seed, n, d)
    sel = spice.select(G, n // 2 + 1, alpha=1.3)
    S = sel.indices
    expect = np.linalg.slogdet(
        np.eye(len(S)) + 1.3 * G[S].astype(np.float64) @ G[S].astype(np.float64).T
    )[1]
    assert sel.logdet == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert spice.logdet(G, S, 1.3) == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert sel.logdet == pytest.approx(float(np.sum(sel.gains)), rel=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(2, 60), d=st.integers(1, 16))
def test_fisher_gains_decrease_and_eps_nonpositive(seed, n, d):
    G = gaussian(seed, n, d)
    sel = spice.select(G, n, conflict_penalty=0.0)
    assert np.all(np.diff(sel.gains) <= 1e-12)
    assert np.all(sel.epsilon <= 1e-12)
    assert np.all(sel.gains > 0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(4, 12),
    d=st.integers(2, 6),
    alpha=st.sampled_from([0.2, 1.0, 4.0]),
)
def test_approximation_guarantees_against_brute_force_opt(seed, n, d, alpha):
    G = gaussian(seed, n, d).astype(np.float64)
    k = min(4, n - 1)
    sel = spice.select(G, k, alpha=alpha, conflict_penalty=0.0, method="naive")
    opt = max(
        np.linalg.slogdet(np.eye(k) + alpha * G[list(S)] @ G[list(S)].T)[1]
        for S in itertools.combinations(range(n), k)
    )
    assert sel.logdet >= (1 - 1 / math.e) * opt - 1e-9
    c = spice.curvature(G, alpha)
    assert sel.logdet >= c.factor * opt - 1e-9
    assert opt <= sel.opt_upper_bound + 1e-9
    lazy = spice.select(G, k, alpha=alpha, conflict_penalty=0.0, method="lazy")
    assert opt <= lazy.opt_upper_bound + 1e-9
    assert 0 < lazy.certified_ratio <= 1 + 1e-12


def test_curvature_matches_leave_one_out_brute_force():
    G = gaussian(5, 9, 4).astype(np.float64)
    alpha = 0.8
    full = np.linalg.slogdet(np.eye(4) + alpha * G.T @ G)[1]
    ratios = []
    for x in range(9):
        rest = np.delete(G, x, axis=0)
        loo = full - np.linalg.slogdet(np.eye(4) + alpha * rest.T @ rest)[1]
        ratios.append(loo / np.log1p(alpha * G[x] @ G[x]))
    c = spice.curvature(G, alpha)
    assert c.c == pytest.approx(1 - min(ratios), rel=1e-9)
    assert c.argmin == int(np.argmin(ratios))
    assert c.factor == pytest.approx((1 - math.exp(-c.c)) / c.c, rel=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(3, 50), d=st.integers(2, 20))
def test_fisher_greedy_is_dpp_map(seed, n, d):
    G = gaussian(seed, n, d).astype(np.float64)
    k = min(n, d, 10)
    L = np.eye(n) + 0.5 * G @ G.T.copy()
    sel = spice.select(G, k, alpha=0.5, conflict_penalty=0.0)
    assert sel.indices.tolist() == dpp_map_greedy(L, k)


@SETTINGS
@given(seed=st.integers(0, 2**31), rows=st.lists(st.integers(0, 29), min_size=1, max_size=10))
def test_sign_flip_is_invisible_without_penalty(seed, rows):
    G = gaussian(seed, 30, 8)
    H = G.copy()
    H[rows] *= -1
    a = spice.select(G, 12, conflict_penalty=0.0)
    b = spice.select(H, 12, conflict_penalty=0.0)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.gains, b.gains, rtol=1e-12)


def test_penalty_changes_picks_on_conflicting_data():
    # Row 1 carries more information than row 2 but points against row 0 (cos = -0.51).
    G = np.zeros((4, 3), np.float32)
    G[0] = [3, 0, 0]
    G[1] = [-1.5, 2.5, 0]
    G[2] = [0.3, 2.3, 0]
    G[3] = [0, 0, 0.5]
    plain = spice.select(G, 2, conflict_penalty=0.0)
    pen = spice.select(G, 2, conflict_penalty=1.0)
    assert plain.indices.tolist() == [0, 1]
    assert plain.conflict[1] == pytest.approx(1.5 / np.hypot(1.5, 2.5), rel=1e-6)
    assert pen.indices.tolist() == [0, 2]
    assert pen.scores[1] == pytest.approx(pen.gains[1])


@pytest.mark.parametrize("lam", [0.0, 0.2])
def test_k_much_larger_than_d_uses_the_inverse_path_exactly(lam):
    # t >= d switches u = M^{-1} g to an explicit d x d inverse; picks and gains must not move.
    G = gaussian(21, 160, 6)
    ref = greedy_reference(G, 90, alpha=0.8, conflict_penalty=lam)
    for method in ("naive", "lazy"):
        sel = spice.select(G, 90, alpha=0.8, conflict_penalty=lam, method=method)
        assert_same(sel, ref, atol=1e-13)
        assert sel.logdet == pytest.approx(ref.logdet, rel=1e-10)


@pytest.mark.slow
def test_inverse_path_from_the_upper_triangle_only():
    """From d = 512 the M^{-1} bound reads, and the rank-32 folds write, only the upper triangle
    of M^{-1} (each row from the start of its block): against the brute-force reference, with
    k - d = 88 steps (two folds) past the explicit inverse's start, for naive and lazy."""
    G = np.random.default_rng(4).standard_normal((700, 520)).astype(np.float32)
    G[350:] *= 0.3
    ref = greedy_reference(G, 608, conflict_penalty=0.3)
    for method in ("naive", "lazy"):
        assert_same(spice.select(G, 608, conflict_penalty=0.3, method=method), ref)


@pytest.mark.parametrize("lam,d", [(0.0, 40), (0.3, 40), (0.3, 100)])
def test_inverse_path_with_simd_widths_and_stale_bounds(lam, d):
    # d = 40 fills whole SIMD blocks of the rank-32 inverse updates. The 200 short rows wait in
    # the queue until the 200 long ones are taken (t = 200 > 4d), so lazy greedy first bounds
    # them through M^{-1} and then catches them up. d = 100 spans three row blocks of
    # u = M^{-1} g from the upper triangle.
    G = np.random.default_rng(4).standard_normal((400, d))
    G[200:] *= 0.3
    ref = greedy_reference(G, 260, alpha=0.5, conflict_penalty=lam)
    naive = spice.select(G, 260, alpha=0.5, conflict_penalty=lam, method="naive")
    lazy = spice.select(G, 260, alpha=0.5, conflict_penalty=lam, method="lazy")
    assert_same(naive, ref, rtol=1e-8)
    assert_same(lazy, naive, rtol=0, atol=0)


def test_reference_answers_by_key_as_it_did_as_a_dict():
    ref = greedy_reference(gaussian(1, 12, 4), 5)
    assert ref["indices"] is ref.indices and ref["logdet"] == ref.logdet
    with pytest.raises(KeyError, match="spent"):
        ref["spent"]  # the constrained oracle's old name for tokens
