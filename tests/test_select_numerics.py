"""Numeric edges of the selector and of spice.logdet / spice.curvature, against exact arithmetic
(mpmath at enough digits to keep the identity next to entries of 1e320)."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spice
from spice import gpu
from spice._inputs import as_features
from spice.reference import greedy_reference

METHODS = ("naive", "lazy", "stochastic")


def mp_logdet(R: np.ndarray, alpha: float) -> mpmath.mpf:
    """log det(I + alpha R R^T), exact to far more digits than float64 (floats convert exactly)."""
    R = np.atleast_2d(np.asarray(R, dtype=np.float64))
    if R.shape[0] == 0:
        return mpmath.mpf(0)
    mx = float(np.max(np.abs(R)))
    top = max(0.0, math.log10(alpha) + 2 * math.log10(mx) + math.log10(R.shape[1])) if mx else 0
    with mpmath.workdps(int(2 * top) + 60):
        A = mpmath.matrix(R.tolist())
        K = mpmath.eye(A.rows) + mpmath.mpf(alpha) * A * A.T
        return mpmath.log(mpmath.det(K))


def mp_curvature(G: np.ndarray, alpha: float) -> tuple[float, int]:
    """(c, argmin) from the definition: leave-one-out gains over single-row gains."""
    full = mp_logdet(G, alpha)
    ratios = []
    for x in range(G.shape[0]):
        base = mp_logdet(G[x : x + 1], alpha)
        ratios.append((full - mp_logdet(np.delete(G, x, axis=0), alpha)) / base)
    j = min(range(len(ratios)), key=lambda i: ratios[i])
    return float(1 - ratios[j]), j


# ---------------------------------------------------------------- spice.logdet
def test_logdet_of_a_row_whose_norm_overflows():
    G = np.full((1, 10), 1e160)  # ||g||^2 = 1e321 overflows; log det = log(1 + 1e321)
    assert spice.logdet(G, [0], 1.0) == pytest.approx(float(mp_logdet(G, 1.0)), rel=1e-13)
    assert spice.logdet(G, [0], 1.0) == pytest.approx(739.1298, abs=1e-4)


@pytest.mark.parametrize("p", [100, 130, 154, 160, 200, 300])
@pytest.mark.parametrize("alpha", [1e-3, 1.0, 1e5])
def test_logdet_of_huge_rows_matches_exact(p, alpha):
    rng = np.random.default_rng(p)
    G = rng.standard_normal((5, 6)) * 10.0**p
    G[3] *= 1e-150  # rows of very different scale in one set
    for idx in ([0], [0, 1, 2], [0, 3, 4], [4, 2, 3, 1, 0]):  # m <= d: the m x m form
        got = spice.logdet(G, idx, alpha)
        assert got == pytest.approx(float(mp_logdet(G[idx], alpha)), rel=1e-10)
    H = rng.standard_normal((8, 3)) * 10.0**p  # m > d: the d x d form
    got = spice.logdet(H, np.arange(8), alpha)
    assert got == pytest.approx(float(mp_logdet(H, alpha)), rel=1e-10)


def test_logdet_of_huge_rows_with_a_tiny_alpha():
    rng = np.random.default_rng(3)
    G = rng.standard_normal((4, 3)) * 1e155  # ||g||^2 overflows, alpha ||g||^2 ~ 1e10 does not
    got = spice.logdet(G, [0, 1, 2, 3], 1e-300)
    assert got == pytest.approx(float(mp_logdet(G, 1e-300)), rel=1e-10)


def test_logdet_refuses_what_float64_cannot_resolve():
    g = np.random.default_rng(4).standard_normal(5) * 1e160
    G = np.vstack([g, g])  # the identity is all that separates the two; it drowns in round-off
    with pytest.raises(ValueError, match="cannot be resolved in float64"):
        spice.logdet(G, [0, 1], 1.0)
    # A repeated row is resolved well beyond alpha ||g||^2 = 1e12: log(1 + 2 alpha ||g||^2), not
    # log(alpha ||g||^2) (QR keeps the identity's share of the second pivot).
    G = np.array([[1.0, 0.0], [1.0, 0.0]])
    for a in (1e11, 1e13, 1e16):
        assert spice.logdet(G, [0, 1], a) == pytest.approx(math.log1p(2 * a), rel=1e-13)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 6),
    d=st.integers(1, 5),
    k=st.integers(-900, 900),
    alpha=st.sampled_from([1e-6, 0.3, 1.0, 7.0, 1e4]),
)
def test_logdet_is_invariant_under_power_of_two_scaling(seed, m, d, k, alpha):
    # G -> 2^k G, alpha -> 4^-k alpha leaves every alpha g g^T unchanged: the log det must be
    # the same, bit for bit, however far 2^k G is from 1 (until alpha 4^-k leaves float64).
    G = np.random.default_rng(seed).standard_normal((m, d))
    idx = np.arange(m)
    if abs(math.log10(alpha) - 2 * k * math.log10(2)) > 300:
        return
    a2 = math.ldexp(alpha, -2 * k)
    try:
        ref = spice.logdet(G, idx, alpha)
    except ValueError:
        return  # nearly dependent rows at this alpha: refused at every scale (checked below)
    assert spice.logdet(np.ldexp(G, k), idx, a2) == ref


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 4),
    d=st.integers(1, 4),
    p=st.integers(0, 300),
    alpha=st.sampled_from([1e-300, 1e-100, 1e-3, 1.0, 1e3]),
)
def test_logdet_is_right_or_refused(seed, m, d, p, alpha):
    G = np.random.default_rng(seed).standard_normal((m, d)) * 10.0**p
    try:
        got = spice.logdet(G, np.arange(m), alpha)
    except ValueError as e:
        assert "cannot be resolved" in str(e)
        return
    assert got == pytest.approx(float(mp_logdet(G, alpha)), rel=1e-8, abs=1e-12)


# ---------------------------------------------------------------- spice.curvature
@pytest.mark.parametrize("p", [0, 100, 140, 154, 160, 250])
@pytest.mark.parametrize("n, d", [(7, 3), (3, 5)])  # the d x d and the n x n forms
def test_curvature_of_huge_rows_matches_exact(p, n, d):
    rng = np.random.default_rng(p + n)
    G = rng.standard_normal((n, d)) * 10.0**p
    c, arg = mp_curvature(G, 1.0)
    got = spice.curvature(G, 1.0)
    assert got.c == pytest.approx(c, rel=1e-7, abs=1e-12)
    assert got.argmin == arg
    assert got.factor == pytest.approx(1.0 if c < 1e-12 else (1 - math.exp(-c)) / c, rel=1e-7)


def test_curvature_of_a_huge_row_among_near_copies():
    # Near-copies of a row of norm 3e160: alpha g^T M^-1 g close to 1 for every row.
    rng = np.random.default_rng(8)
    g = np.full(10, 1e160)
    G = np.vstack([g + 1e159 * rng.standard_normal(10) for _ in range(4)])
    c, arg = mp_curvature(G, 1.0)
    got = spice.curvature(G, 1.0)
    assert got.c == pytest.approx(c, rel=1e-7) and got.argmin == arg


def test_curvature_rounds_up_what_float64_cannot_resolve():
    # Five copies of a row of 1e160: the leave-one-out gains drown in round-off; c is then
    # reported no smaller than the exact one (the guarantee is never overstated).
    g = np.random.default_rng(9).standard_normal(3) * 1e160
    G = np.vstack([g] * 5)
    c, _ = mp_curvature(G, 1.0)
    got = spice.curvature(G, 1.0)
    assert got.c >= c and got.factor <= (1 - math.exp(-c)) / c


# ---------------------------------------------------------------- spice.select: span rule
def test_repeated_row_at_large_alpha_is_not_in_the_span():
    G = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = 1e11
    ref = greedy_reference(G, 3, alpha=a)
    for method in METHODS:
        sel = spice.select(G, 3, alpha=a, conflict_penalty=0.0, method=method)
        assert sel.indices.tolist() == [0, 2, 1] == ref.indices.tolist()
        assert sel.stop_reason == "budget"
        expect = [math.log1p(a), math.log1p(a), math.log1p(a / (1 + a))]
        np.testing.assert_allclose(sel.gains, expect, rtol=1e-6)
    emu = gpu.emulate(G, 3, alpha=a)
    assert emu["indices"].tolist() == [0, 2, 1]


def test_float16_rows_at_the_top_of_their_range_all_count():
    G = np.full((5, 4), 60000.0, np.float16)  # alpha ||g||^2 = 1.44e10
    x = 4 * 60000.0**2
    expect = [math.log1p(x / (1 + t * x)) for t in range(5)]
    for method in METHODS:
        sel = spice.select(G, 5, alpha=1.0, method=method)
        assert sel.indices.tolist() == [0, 1, 2, 3, 4] and sel.stop_reason == "budget"
        np.testing.assert_allclose(sel.gains, expect, rtol=1e-5)
    assert gpu.emulate(G, 5)["indices"].tolist() == [0, 1, 2, 3, 4]


def test_row_with_negligible_residual_and_gain_is_in_the_span():
    # After the first pick the second row's residual is 1.1e-11 ||g||^2 and its gain 1e-15.
    G = np.array([[3e5, 0.0], [1e-2, 0.0]])
    ref = greedy_reference(G, 2)
    for method in METHODS:
        sel = spice.select(G, 2, method=method)
        assert sel.indices.tolist() == [0] == ref.indices.tolist()
        assert sel.stop_reason == "exhausted" == ref.stop_reason


# ---------------------------------------------------------------- spice.select: refused rows
def test_row_whose_norm_overflows_is_refused_by_name():
    G = np.random.default_rng(5).standard_normal((6, 10))
    G[4] = 1e160
    with pytest.raises(ValueError, match=r"row 4 of G is too large: \|\|g\|\|\^2 = 1e321.0 overfl"):
        spice.select(G, 3)


def test_alpha_norm2_limit_is_named_and_exact():
    G = np.diag([1.0, 2.0, 1e6])  # alpha ||g||^2 = 1e12: the limit itself is accepted
    for method in METHODS:
        assert len(spice.select(G, 3, method=method)) == 3
    with pytest.raises(ValueError, match=r"row 2 .*alpha \* \|\|g\|\|\^2 = 1e12.3 .*exceeds 1e\+1"):
        spice.select(G, 3, alpha=2.0)
    raw = gpu.emulate(G, 3, alpha=2.0)
    assert raw["bad_row"] == 2
    arr, code = as_features(G)
    ops = gpu._NumpyOps(arr, code)
    assert gpu._run(ops, 3, 1.0, 0.0, 0.0, "lazy", 0, 0.01)["bad_row"] == -1
    # the compatibility objectives do no Sherman-Morrison arithmetic: only overflow is refused
    assert len(spice.select(G, 3, alpha=2.0, objective="topk-compat")) == 3


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": math.inf}, r"alpha = inf must be a finite number > 0"),
        ({"alpha": -math.inf}, r"alpha = -inf must be a finite number > 0"),
        ({"conflict_penalty": math.inf}, r"conflict_penalty = inf must be a finite number >= 0"),
        ({"early_stop": math.inf}, r"early_stop = inf must be a number in \(0, 1\)"),
        ({"stochastic_eps": math.nan}, r"stochastic_eps = nan must be a number in \(0, 1\)"),
    ],
)
def test_numeric_parameter_messages_state_the_rule(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spice.select(np.eye(3), 2, **kwargs)


# ---------------------------------------------------------------- progress callbacks
@pytest.mark.parametrize(
    "ret, stop",
    [
        (None, "budget"),
        (True, "budget"),
        (np.True_, "budget"),
        (False, "cancelled"),
        (np.False_, "cancelled"),
    ],
)
@pytest.mark.parametrize("method", ["naive", "lazy"])
def test_progress_return_values(ret, stop, method):
    # The hook runs at least after the last pick, so a False there cancels even a full run.
    sel = spice.select(np.eye(4), 3, method=method, progress=lambda *_: ret)
    assert sel.stop_reason == stop


@pytest.mark.parametrize("ret", [0, 1, "stop", [], 0.0])
def test_progress_return_of_another_type_is_named(ret):
    def my_progress(*_):
        return ret

    with pytest.raises(
        TypeError,
        match=rf"progress callback .*my_progress returned "
        rf"{type(ret).__name__}",
    ):
        spice.select(np.eye(4), 3, progress=my_progress)
    arr, code = as_features(np.eye(4))
    with pytest.raises(TypeError, match="my_progress returned"):
        gpu._run(gpu._NumpyOps(arr, code), 3, 1.0, 0.0, 0.0, "lazy", 0, 0.01, my_progress)


def test_numeric_constants_agree_across_cpu_gpu_and_python():
    """The in-span tolerances, eta and the refused-row limit have one home per language:
    csrc/spice/numerics.hpp (CPU core), python/spice/_numerics.py (GPU driver, reference, input
    checks) and the CUDA source's defines. They must be the same numbers."""
    import re
    from pathlib import Path

    from spice import _numerics

    root = Path(__file__).resolve().parent.parent
    hpp = (root / "csrc" / "spice" / "numerics.hpp").read_text()
    cu = (root / "csrc" / "cuda" / "spice_kernels.cu").read_text()

    def cpp(name):
        return float(re.search(rf"constexpr double {name} = ([0-9.e+-]+);", hpp).group(1))

    def cuda(name):
        return float(re.search(rf"#define {name} ([0-9.e+-]+)", cu).group(1))

    assert cpp("kRelTiny") == _numerics.REL_TINY == cuda("SPICE_REL_TINY")
    assert cpp("kGainTiny") == _numerics.GAIN_TINY == cuda("SPICE_GAIN_TINY")
    assert cpp("kEta") == _numerics.ETA == cuda("SPICE_ETA")
    assert cpp("kMaxAlphaNorm2") == _numerics.MAX_ALPHA_NORM2
