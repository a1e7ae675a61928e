"""Input handling of spice.select: dtypes, storage, threads, bad input, hostile values."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import spice
from spice.reference import diag_compat_reference, greedy_reference, topk_compat_reference

from helpers import assert_same
from select_data import clustered, gaussian


# ---------------------------------------------------------------- bad input: clear errors
@pytest.mark.parametrize(
    "G, k, kwargs, exc, match",
    [
        (np.zeros(5, np.float32), 1, {}, ValueError, "2-D"),
        (np.zeros((0, 4), np.float32), 1, {}, ValueError, "empty"),
        (np.zeros((4, 0), np.float32), 1, {}, ValueError, "empty"),
        (np.array([["a", "b"]]), 1, {}, TypeError, "non-numeric"),
        (np.ones((3, 2), bool), 1, {}, TypeError, "boolean"),
        ("not an array", 1, {}, TypeError, "2-D numeric array"),
        (np.ones((5, 3), np.float32), -1, {}, ValueError, "out of range"),
        (np.ones((5, 3), np.float32), 6, {}, ValueError, "out of range"),
        (np.ones((5, 3), np.float32), 0.0, {}, ValueError, r"\(0, 1\]"),
        (np.ones((5, 3), np.float32), 1.5, {}, ValueError, r"\(0, 1\]"),
        (np.ones((5, 3), np.float32), True, {}, TypeError, "bool"),
        (np.ones((5, 3), np.float32), "3", {}, TypeError, "int"),
        (np.ones((5, 3), np.float32), 2, {"alpha": 0.0}, ValueError, "alpha"),
        (np.ones((5, 3), np.float32), 2, {"alpha": -1.0}, ValueError, "alpha"),
        (np.ones((5, 3), np.float32), 2, {"alpha": float("nan")}, ValueError, "alpha"),
        (np.ones((5, 3), np.float32), 2, {"conflict_penalty": -0.1}, ValueError, "penalty"),
        (np.ones((5, 3), np.float32), 2, {"early_stop": 0.0}, ValueError, "early_stop"),
        (np.ones((5, 3), np.float32), 2, {"early_stop": 1.0}, ValueError, "early_stop"),
        (np.ones((5, 3), np.float32), 2, {"method": "fast"}, ValueError, "method"),
        (np.ones((5, 3), np.float32), 2, {"objective": "dpp"}, ValueError, "objective"),
        (np.ones((5, 3), np.float32), 2, {"threads": 0}, ValueError, "threads"),
    ],
)
def test_bad_input_is_named(G, k, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        spice.select(G, k, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_nonfinite_names_first_bad_row(bad, dtype):
    G = gaussian(0, 20, 4).astype(dtype)
    G[7, 2] = bad
    G[12, 0] = bad
    with pytest.raises(ValueError, match="first bad row 7"):
        spice.select(G, 3)


def test_float64_overflow_is_reported():
    G = gaussian(0, 10, 4).astype(np.float64)
    G[3] = 1e200
    with pytest.raises(ValueError, match="row 3.*overflows"):
        spice.select(G, 3)


# ---------------------------------------------------------------- degenerate but valid input
def test_rank_deficient_input_is_fine():
    # log det(I + αF) keeps growing inside span(S), so k > rank(G) is a valid budget.
    rng = np.random.default_rng(1)
    G = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 10))
    for method in ("naive", "lazy", "stochastic"):
        sel = spice.select(G, 20, method=method, conflict_penalty=0.0)
        assert sel.stop_reason == "budget" and len(sel) == 20
        assert np.isfinite(sel.gains).all() and np.all(sel.gains > 0)
        if method != "stochastic":
            assert np.all(np.diff(sel.gains) <= 1e-12)
            np.testing.assert_array_equal(sel.indices, greedy_reference(G, 20).indices)


def test_only_zero_rows_left_stops_exhausted():
    G = np.zeros((10, 4), np.float32)
    sel = spice.select(G, 5)
    assert len(sel) == 0 and sel.stop_reason == "exhausted" and sel.logdet == 0.0
    G[[2, 5, 7]] = gaussian(1, 3, 4)
    for method in ("naive", "lazy", "stochastic"):
        sel = spice.select(G, 8, method=method)
        assert sorted(sel.indices.tolist()) == [2, 5, 7]
        assert sel.stop_reason == "exhausted"


def test_duplicate_rows_follow_closed_form():
    g = np.array([1.0, 2.0, 0.0])
    G = np.tile(g.astype(np.float32), (6, 1))
    sel = spice.select(G, 4, alpha=0.5)
    assert sel.indices.tolist() == [0, 1, 2, 3]  # exact ties go to the lowest index
    a = 0.5 * float(g @ g)
    expect = [np.log1p(a / (1 + t * a)) for t in range(4)]
    np.testing.assert_allclose(sel.gains, expect, rtol=1e-12)


def test_k_zero_and_fraction():
    G = gaussian(0, 50, 5)
    assert len(spice.select(G, 0)) == 0
    assert spice.select(G, 0.1).k == 5
    assert spice.select(G, 1.0).k == 50
    assert spice.resolve_k(0.29, 100) == 29


# ---------------------------------------------------------------- dtypes and storage
def test_half_precision_matches_float32_of_same_values():
    G16 = gaussian(2, 300, 20).astype(np.float16)
    ref = spice.select(G16.astype(np.float32), 40, conflict_penalty=0.1)
    got = spice.select(G16, 40, conflict_penalty=0.1)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.gains, ref.gains)


def test_bfloat16_inputs():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    G = gaussian(4, 200, 12)
    Gb = G.astype(ml_dtypes.bfloat16)
    ref = spice.select(Gb.astype(np.float32), 30)
    np.testing.assert_array_equal(spice.select(Gb, 30).indices, ref.indices)
    raw = Gb.view(np.uint16)
    np.testing.assert_array_equal(spice.select(raw, 30, bf16=True).indices, ref.indices)


def test_float64_matches_reference():
    G = gaussian(5, 60, 7).astype(np.float64)
    sel = spice.select(G, 10, conflict_penalty=0.2)
    assert_same(sel, greedy_reference(G, 10, conflict_penalty=0.2))


def test_memmap_identical_to_in_memory(tmp_path):
    G = clustered(6, 500, 32)
    path = tmp_path / "g.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=G.shape)
    mm[:] = G
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=G.shape)
    a = spice.select(G, 50, conflict_penalty=0.1)
    b = spice.select(ro, 50, conflict_penalty=0.1)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.gains, b.gains)


def test_strided_rows_and_torch_tensors():
    G = clustered(7, 400, 16)
    sub = G[::3]  # strided rows, contiguous inside a row: read in place
    a = spice.select(sub, 20)
    b = spice.select(np.ascontiguousarray(sub), 20)
    np.testing.assert_array_equal(a.indices, b.indices)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(G)
    np.testing.assert_array_equal(spice.select(t, 20).indices, spice.select(G, 20).indices)
    tb = t.to(torch.bfloat16)
    ref = spice.select(tb.float().numpy(), 20)
    np.testing.assert_array_equal(spice.select(tb, 20).indices, ref.indices)


def test_float32_input_is_not_copied():
    G = gaussian(8, 40000, 64)  # 10 MB
    tracemalloc.start()
    spice.select(G, 50, method="naive")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < G.nbytes / 4, f"peak python-side allocation {peak} vs G {G.nbytes}"


@pytest.mark.parametrize("method", ["naive", "lazy", "stochastic"])
def test_threads_do_not_change_results(method):
    G = clustered(9, 3000, 40)
    a = spice.select(G, 100, conflict_penalty=0.1, method=method, threads=1)
    b = spice.select(G, 100, conflict_penalty=0.1, method=method, threads=2)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.gains, b.gains)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_every_kernel_table_agrees_with_reference(isa):
    if isa == "avx2" and spice.kernel_isa() == "generic":
        pytest.skip("no AVX2 on this CPU")
    want = {"generic": "generic", "avx2": "avx2-fma"}[isa]
    code = (
        "import numpy as np, spice\n"
        "from spice.reference import greedy_reference\n"
        f"assert spice.kernel_isa() == {want!r}, spice.kernel_isa()\n"
        "G = np.random.default_rng(3).standard_normal((60, 9)).astype(np.float16)\n"
        "s = spice.select(G, 9, conflict_penalty=0.3, method='lazy')\n"
        "r = greedy_reference(G, 9, conflict_penalty=0.3)\n"
        "assert s.indices.tolist() == r.indices.tolist(), (s.indices, r.indices)\n"
        "np.testing.assert_allclose(s.gains, r.gains, rtol=1e-9)\n"
        "G = np.random.default_rng(4).standard_normal((400, 100))\n"  # k > d: the inverse path
        "G[200:] *= 0.3\n"
        "s = spice.select(G, 260, conflict_penalty=0.3, method='lazy')\n"
        "r = greedy_reference(G, 260, conflict_penalty=0.3)\n"
        "assert s.indices.tolist() == r.indices.tolist(), (s.indices, r.indices)\n"
        "np.testing.assert_allclose(s.gains, r.gains, rtol=1e-8)\n"
    )
    env = dict(os.environ, SPICE_KERNELS=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# ---------------------------------------------------------------- stochastic, compat, progress
def test_stochastic_is_seeded():
    G = clustered(10, 2000, 16)
    a = spice.select(G, 100, method="stochastic", seed=5)
    b = spice.select(G, 100, method="stochastic", seed=5)
    c = spice.select(G, 100, method="stochastic", seed=6)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.indices.tolist() != c.indices.tolist()
    lazy = spice.select(G, 100, method="lazy")
    assert a.logdet >= 0.8 * lazy.logdet
    assert a.evaluations < lazy.evaluations * 5


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    lam=st.sampled_from([0.0, 0.1, 1.0]),
    alpha=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_diag_compat_matches_transcription(seed, lam, alpha):
    G = gaussian(seed, 60, 8) * 0.7
    sel = spice.select(G, 15, alpha=alpha, conflict_penalty=lam, objective="diag-compat")
    assert_same(sel, diag_compat_reference(G, 15, alpha=alpha, conflict_penalty=lam))
    assert np.isnan(sel.opt_upper_bound)
    assert sel.logdet == pytest.approx(spice.logdet(G, sel.indices, alpha), rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), omega=st.sampled_from([None, 0.5, 0.9]))
def test_topk_compat_matches_transcription(seed, omega):
    G = gaussian(seed, 80, 6)
    G[5] = G[9]  # a tie: lower index first
    sel = spice.select(G, 20, objective="topk-compat", early_stop=omega)
    assert_same(sel, topk_compat_reference(G, 20, early_stop=omega))


def test_progress_callback_and_cancel():
    G = clustered(11, 2000, 16)
    calls = []

    def cb(picks, budget, evals, elapsed):
        calls.append((picks, budget))
        return picks < 5

    import spice.selection as S

    sel = S.select(G, 300, progress=cb, method="naive")
    assert calls and all(b == 300 for _, b in calls)
    # the hook is rate limited, so the run may go a little past 5 picks before it stops
    assert sel.stop_reason in ("cancelled", "budget")
    with pytest.raises(TypeError):
        spice.select(G, 3, progress=42)


def test_progress_callback_exception_propagates():
    G = clustered(12, 500, 8)

    def cb(*_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        spice.select(G, 50, progress=cb)


# ---------------------------------------------------------------- hostile values
hostile_floats = st.one_of(
    st.sampled_from([0.0, -0.0, 1e-45, 5e-324, 1e-300, 1e-30, 1.0, -1.0, 1e30, 3e38, -3e38]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    G=hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12), elements=hostile_floats
    ),
    k=st.integers(0, 12),
    lam=st.sampled_from([0.0, 0.1, 10.0]),
    method=st.sampled_from(["naive", "lazy", "stochastic"]),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_hostile_inputs_never_crash(G, k, lam, method, dtype):
    with np.errstate(over="ignore"):
        G = G.astype(dtype)
    k = min(k, G.shape[0])
    try:
        sel = spice.select(G, k, conflict_penalty=lam, method=method)
    except ValueError as e:
        assert "NaN or Inf" in str(e) or "too large" in str(e)
        return
    assert len(sel) <= k
    assert np.isfinite(sel.gains).all() and np.isfinite(sel.logdet)
    assert len(set(sel.indices.tolist())) == len(sel)
    if method != "stochastic":
        other = spice.select(
            G, k, conflict_penalty=lam, method="lazy" if method == "naive" else "naive"
        )
        np.testing.assert_array_equal(sel.indices, other.indices)


def test_base_out_holds_every_rows_base_gain():
    G = clustered(13, 300, 10)
    base = np.full(300, np.nan)
    sel = spice.select(G, 30, alpha=0.7, base_out=base)
    expect = np.log1p(0.7 * np.einsum("ij,ij->i", G.astype(np.float64), G.astype(np.float64)))
    np.testing.assert_allclose(base, expect, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(base[sel.indices], sel.base)
    with pytest.raises(ValueError, match="base_out"):
        spice.select(G, 3, base_out=np.zeros(300, np.float32))
    with pytest.raises(ValueError, match="base_out"):
        spice.select(G, 3, base_out=np.zeros(299))


@pytest.mark.parametrize("method", ["lazy", "naive", "stochastic"])
def test_spill_dir_gives_identical_results_and_leaves_nothing(tmp_path, method):
    """w rows in a mapped temporary file instead of RAM: same arithmetic, so the same picks and
    bit-identical gains (k > d, so the M^{-1} path and its bounds run too); the file is unlinked
    at once, so the directory is empty during and after the run."""
    G = clustered(5, 600, 24)
    seen, mapped = [], []

    def cb(picks, budget, evaluations, elapsed):
        seen.append(sorted(os.listdir(tmp_path)))
        if os.path.exists("/proc/self/maps"):  # Linux: the rows really are in that file
            with open("/proc/self/maps") as f:
                mapped.append(any(str(tmp_path) in line and "spice-w-" in line for line in f))

    a = spice.select(G, 120, method=method, seed=3)
    b = spice.select(G, 120, method=method, seed=3, spill_dir=tmp_path, progress=cb)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.gains, b.gains)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert seen and all(s == [] for s in seen)
    assert os.listdir(tmp_path) == []
    if mapped:
        assert all(mapped)


def test_spill_dir_errors_are_named(tmp_path):
    G = clustered(5, 50, 8)
    with pytest.raises(ValueError, match="not an existing directory"):
        spice.select(G, 5, spill_dir=tmp_path / "missing")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not an existing directory"):
        spice.select(G, 5, spill_dir=f)
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(RuntimeError, match="spill_dir: cannot create a file in"):
            spice.select(G, 5, spill_dir=ro)


def test_options_after_k_are_keyword_only():
    import spice

    G = np.eye(4, dtype=np.float32)
    with pytest.raises(TypeError):
        spice.select(G, 2, 1.0)  # alpha by position would be easy to misread
    assert spice.select(G, 2, alpha=1.0).indices.tolist() == [0, 1]
