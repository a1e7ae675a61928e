"""normalize="unit": selection on g_i / ||g_i||, computed on the fly from G as given.

The oracle is the same core on a float64 normalised copy of G. Unit rows all have the first gain
log(1 + alpha); the core takes their squared norm as exactly 1, so equal gains go by index, while
the copy's squared norms carry round-off of a few ulps. The copy's row i is therefore scaled by
1 + (n - i) * 2**-46 (far above that round-off, far below the tolerances): its equal gains are
then ordered by index too, and every later pick is decided by real differences. The data are
Gaussian with d >= 3: no two rows proportional (their unit rows would be equal, a tie that
round-off decides, differently in the two runs), even after rounding to bfloat16.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spice
from spice.cli import main

ml_dtypes = pytest.importorskip("ml_dtypes")
DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}


def unit_copy(G: np.ndarray, tie_order: bool = True) -> np.ndarray:
    """float64 G / ||G|| by rows (zero rows stay zero); with tie_order, equal gains by index."""
    x = np.asarray(G).astype(np.float64)
    nrm = np.linalg.norm(x, axis=1)
    out = np.zeros_like(x)
    pos = nrm > 0
    out[pos] = x[pos] / nrm[pos, None]
    if tie_order:
        n = x.shape[0]
        out *= (1.0 + (n - np.arange(n)) * 2.0**-46)[:, None]
    return out


def features(seed: int, n: int, d: int, dtype: str, zeros: int) -> np.ndarray:
    """Gaussian rows with norms spread over three decades (what unit rows must ignore)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, d)) * np.exp(rng.uniform(-3.0, 3.0, size=(n, 1)))
    g[rng.choice(n, size=zeros, replace=False)] = 0.0
    return g.astype(DTYPES[dtype])


def assert_same(a: spice.Selection, b: spice.Selection) -> None:
    assert a.indices.tolist() == b.indices.tolist()
    assert a.stop_reason == b.stop_reason
    np.testing.assert_allclose(a.gains, b.gains, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(a.base, b.base, rtol=1e-11)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(a.align, b.align, rtol=1e-10, atol=1e-12)
    assert a.logdet == pytest.approx(b.logdet, rel=1e-11)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 40),
    d=st.integers(3, 12),
    dtype=st.sampled_from(sorted(DTYPES)),
    method=st.sampled_from(["naive", "lazy", "stochastic"]),
    lam=st.sampled_from([0.0, 0.3]),
    omega=st.sampled_from([None, 0.2]),
    alpha=st.sampled_from([None, 0.05, 7.0]),
    kfrac=st.floats(0.05, 1.0),
    zeros=st.integers(0, 3),
)
def test_unit_equals_normalised_copy(seed, n, d, dtype, method, lam, omega, alpha, kfrac, zeros):
    G = features(seed, n, d, dtype, min(zeros, n - 1))
    k = max(1, int(kfrac * n))  # k > d in many examples
    kw = dict(conflict_penalty=lam, early_stop=omega, method=method, seed=seed)
    if alpha is not None:  # None: the default alpha (1.0) in both runs
        kw["alpha"] = alpha
    got = spice.select(G, k, normalize="unit", **kw)
    want = spice.select(unit_copy(G), k, **kw)
    assert_same(got, want)
    assert got.params["normalize"] == "unit" and got.params["alpha"] == (alpha or 1.0)
    zero = np.flatnonzero(~np.any(np.asarray(G, dtype=np.float64) != 0, axis=1))
    assert not set(got.indices.tolist()) & set(zero.tolist())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from(sorted(DTYPES)),
    method=st.sampled_from(["naive", "lazy"]),
    lam=st.sampled_from([0.0, 0.3]),
    with_cost=st.booleans(),
    with_quota=st.booleans(),
)
def test_unit_equals_copy_with_budget_and_quotas(seed, dtype, method, lam, with_cost, with_quota):
    n, d = 30, 5
    G = features(seed, n, d, dtype, 2)
    rng = np.random.default_rng(seed + 1)
    kw: dict = dict(conflict_penalty=lam, method=method)
    if with_cost:
        kw.update(cost=rng.uniform(1.0, 5.0, n), budget=20.0)
    if with_quota:
        kw.update(groups=rng.integers(0, 3, n), quotas={0: 2, 1: 3})
    got = spice.select(G, 12, normalize="unit", **kw)
    want = spice.select(unit_copy(G), 12, **kw)
    assert_same(got, want)
    assert got.safeguard == want.safeguard and got.tokens == want.tokens


def test_large_d_shared_refresh_and_inverse():
    """d >= 4096 takes the refresh's shared-chunk path; k > d (at small d) the M^{-1} path."""
    G = features(11, 60, 4096, "float16", 2)
    for method in ("lazy", "stochastic"):
        kw = dict(conflict_penalty=0.2, method=method, seed=3)
        assert_same(
            spice.select(G, 40, normalize="unit", **kw), spice.select(unit_copy(G), 40, **kw)
        )
    G = features(12, 400, 6, "float32", 5)
    for method in ("naive", "lazy", "stochastic"):
        kw = dict(conflict_penalty=0.1, method=method, seed=4, alpha=3.0)
        assert_same(
            spice.select(G, 200, normalize="unit", **kw), spice.select(unit_copy(G), 200, **kw)
        )


def test_against_brute_force_on_the_cosine_kernel():
    """Independent of the core: log det(I + alpha K_S) of the cosine kernel (unit diagonal) by
    slogdet, each step over every candidate; the core's picks must be the best (ties by index)."""
    G = features(5, 25, 6, "float64", 2)
    alpha = 2.0
    sel = spice.select(G, 10, alpha=alpha, conflict_penalty=0.0, normalize="unit")
    U = unit_copy(G, tie_order=False)
    K = U @ U.T
    np.fill_diagonal(K, (np.linalg.norm(G, axis=1) > 0).astype(float))
    S: list[int] = []
    prev = 0.0
    for j, gain in zip(sel.indices.tolist(), sel.gains):
        vals = np.full(len(G), -np.inf)
        for i in range(len(G)):
            if i not in S and K[i, i] > 0:
                T = S + [i]
                vals[i] = np.linalg.slogdet(np.eye(len(T)) + alpha * K[np.ix_(T, T)])[1] - prev
        best = np.max(vals)
        assert vals[j] >= best - 1e-12 and j == int(np.flatnonzero(vals >= best - 1e-12)[0])
        assert gain == pytest.approx(vals[j], rel=1e-10)
        S.append(j)
        prev += vals[j]
    assert sel.logdet == pytest.approx(prev, rel=1e-10)


def test_raw_selection_prefers_large_rows_and_unit_does_not():
    """The motivating case: 5 huge rows of noise among 60 modest rows; raw log det takes the
    noise first whatever alpha, unit rows do not prefer it."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((65, 16))
    G[60:] *= 100.0
    for alpha in (1e-6, 1.0):
        assert set(spice.select(G, 5, alpha=alpha).indices.tolist()) == set(range(60, 65))
    assert len(set(spice.select(G, 5, normalize="unit").indices.tolist()) & set(range(60, 65))) < 3


def test_zero_rows_never_picked():
    G = np.zeros((6, 3), dtype=np.float32)
    G[2] = [1.0, 2.0, 0.0]
    G[4] = [0.0, 0.0, 1e-30]  # tiny but nonzero: its unit row counts fully
    sel = spice.select(G, 6, normalize="unit", conflict_penalty=0.0)
    assert sel.indices.tolist() == [2, 4]
    assert sel.stop_reason == "exhausted"
    np.testing.assert_allclose(sel.gains, [np.log(2.0)] * 2, rtol=1e-12)


def test_memmap_is_not_copied(tmp_path):
    """A 200k x 64 float16 memmap (25.6 MB): Python-side allocations stay far below its size (a
    float64 normalised copy would be 102 MB)."""
    n, d = 200_000, 64
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=(n, d))
    rng = np.random.default_rng(1)
    for i in range(0, n, 50_000):
        mm[i : i + 50_000] = rng.standard_normal((50_000, d)) * rng.uniform(0.1, 10, (50_000, 1))
    mm.flush()
    G = np.load(tmp_path / "g.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        sel = spice.select(G, 20, normalize="unit")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < G.nbytes / 8, f"peak {peak} bytes for a {G.nbytes}-byte memmap"
    assert len(sel) == 20
    np.testing.assert_allclose(sel.base, np.log(2.0), rtol=1e-12)


def test_base_out_and_summary():
    G = features(3, 20, 4, "float32", 3)
    base = np.empty(20)
    sel = spice.select(G, 5, normalize="unit", alpha=3.0, base_out=base)
    nz = np.any(G != 0, axis=1)
    np.testing.assert_allclose(base[nz], np.log(4.0), rtol=1e-15)
    assert np.all(base[~nz] == 0.0)
    assert "rows: unit" in sel.summary().splitlines()[0]
    assert "rows: raw" in spice.select(G, 5).summary().splitlines()[0]
    assert spice.select(G, 5).params["normalize"] == "none"


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(normalize="Unit"), "normalize must be one of ['none', 'unit'], got 'Unit'"),
        (dict(normalize=None), "normalize must be one of"),
        (dict(normalize="unit", objective="diag-compat"), "needs objective='logdet'"),
        (dict(normalize="unit", objective="topk-compat"), "needs objective='logdet'"),
        (dict(normalize="unit", alpha=1e13), "with normalize='unit' must be <= 1e+12"),
    ],
)
def test_bad_values_are_refused(kw, msg):
    with pytest.raises(ValueError, match=None) as e:
        spice.select(np.eye(3, dtype=np.float32), 2, **kw)
    assert msg in str(e.value)


def test_rows_that_cannot_be_normalised_are_refused():
    G = np.ones((3, 2))
    G[1] = [1e-170, 0.0]  # ||g||^2 underflows float64
    with pytest.raises(ValueError, match="row 1 of G is too small to normalise"):
        spice.select(G, 2, normalize="unit")
    G[1] = [1e160, 1e160]  # ||g||^2 overflows float64
    with pytest.raises(ValueError, match="row 1 of G is too large"):
        spice.select(G, 2, normalize="unit")


def test_gpu_copy_helper_matches_the_oracle_copy():
    """The GPU path's normalised copy (run here with numpy in place of CuPy)."""
    from spice.gpu import unit_rows_copy

    for dtype in DTYPES:
        G = features(7, 30, 5, dtype, 2)
        code = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}[dtype]
        raw = G.view(np.uint16) if dtype == "bfloat16" else G
        x, c = unit_rows_copy(np, raw, code, 1.0)
        assert c == 1
        np.testing.assert_allclose(x, unit_copy(G, tie_order=False), rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="row 0 of G is too small"):
        unit_rows_copy(np, np.array([[1e-170, 0.0]]), 1, 1.0)


def test_cli_normalize_equals_python(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from spice import toy

    n = 40
    G = features(9, n, 8, "float32", 2)
    torch.save(torch.from_numpy(G), tmp_path / "all_unormalized.pt")
    recs = toy.make_instruction_data(n, seed=2)
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    args = ["select", "--features", str(tmp_path / "all_unormalized.pt")]
    args += ["--data", str(tmp_path / "data.jsonl"), "--k", "7", "--penalty", "0.2"]
    assert main([*args, "--out", str(tmp_path / "u"), "--normalize", "unit"]) == 0
    assert main([*args, "--out", str(tmp_path / "r")]) == 0
    got = np.load(tmp_path / "u" / "indices.npy").tolist()
    assert got == spice.select(G, 7, conflict_penalty=0.2, normalize="unit").indices.tolist()
    assert got != np.load(tmp_path / "r" / "indices.npy").tolist()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "x"), "--normalize", "l2"])
    assert "argument --normalize: invalid choice: 'l2'" in capsys.readouterr().err
