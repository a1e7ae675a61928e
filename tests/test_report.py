"""``spice report`` and the norm-percentile warning: every quantity defined, the first picks with
their text, picks against the pool equal to a direct numpy computation, norm percentiles equal to
a brute-force rank, and the warning exactly when the picks' median percentile is above 80%."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import spice  # noqa: E402
from spice.features.records import data_fingerprint  # noqa: E402
from spice.pipeline import select_to_dir  # noqa: E402
from spice.report import (  # noqa: E402
    HIGH_NORM_WARNING,
    distribution,
    high_norm_warning,
    make_report,
    norm_percentiles,
)
from spice.store import FeatureStore, StoreWriter  # noqa: E402

SOURCES = ("math", "chat", "code")


def brute_percentiles(G: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """Mid-rank percentile by counting, pick by pick (norms from np.linalg.norm in float64)."""
    norms = np.linalg.norm(np.asarray(G, dtype=np.float64), axis=1)
    return np.array(
        [
            100.0 * (np.sum(norms < norms[p]) + np.sum(norms <= norms[p])) / (2 * len(norms))
            for p in picks
        ]
    )


def make_run(
    tmp: Path, G: np.ndarray, k: int, *, penalty: float = 0.1, skipped: tuple[int, ...] = ()
) -> tuple[Path, Path, spice.Selection, list[dict]]:
    """A JSONL data file, a spice store holding ``G`` for it (tokens and losses varying by row,
    ``skipped`` rows flagged with no loss) and a selection run folder; returns (run folder,
    store folder, the Selection, the raw records)."""
    n, d = G.shape
    rng = np.random.default_rng(1)
    recs = [
        {
            "id": f"r{i:03d}",
            "prompt": f"question number {i} " + "word " * int(rng.integers(0, 30)),
            "response": f"answer {i} | piped",
            "source": SOURCES[i % 3],
        }
        for i in range(n)
    ]
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    w = StoreWriter(
        tmp / "store",
        {"data": {**data_fingerprint(data), "records": n}},
        total_rows=n,
        dim=d,
        dtype="float32",
        shard_rows=16,
    )
    w.prepare()
    for c in w.chunks:
        a, b = w.chunk_rows(c)
        rows = [
            {
                "row": r,
                "id": recs[r]["id"],
                "tokens": 10 + (r * 7) % 50,
                "loss_tokens": 0 if r in skipped else 3,
                "loss": None if r in skipped else 0.5 + ((r * 13) % 17) / 4.0,
                **({"flags": ["empty_response", "skipped"]} if r in skipped else {}),
            }
            for r in range(a, b)
        ]
        w.write_chunk(c, np.where(np.isin(np.arange(a, b), skipped)[:, None], 0.0, G[a:b]), rows)
    w.finalize()
    out = tmp / "run"
    sel = select_to_dir(FeatureStore.open(tmp / "store"), data, out, k, conflict_penalty=penalty)
    return out, tmp / "store", sel, recs


def table_rows(md: str) -> list[list[str]]:
    """The cells of the first-picks table (rows that start with a pick number)."""
    block = md.split("## The first picks", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in block.splitlines():
        if re.match(r"^\| \d+ \|", line):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            rows.append([c.strip() for c in cells])
    return rows


@pytest.fixture
def mixed(tmp_path):
    """A pool of random rows whose norms vary (k = 25 of 60)."""
    rng = np.random.default_rng(0)
    G = rng.standard_normal((60, 12)) * rng.uniform(0.2, 3.0, size=(60, 1))
    return make_run(tmp_path, G.astype(np.float32), 25, skipped=(5,))


# ----------------------------------------------------------------------------------------------
# norm percentiles


@pytest.mark.parametrize("chunk_rows", [0, 1, 7, 1000])
def test_norm_percentiles_equal_brute_force_rank(chunk_rows):
    rng = np.random.default_rng(3)
    G = rng.standard_normal((97, 9)).astype(np.float32)
    G[10] = G[20]  # exact ties, picked and not picked
    G[30] = -G[20]
    G[40] = 0.0
    picks = np.array([20, 3, 96, 0, 40, 55, 10])
    got = norm_percentiles(G, picks, chunk_rows=chunk_rows)
    np.testing.assert_allclose(got, brute_percentiles(G, picks), rtol=0, atol=1e-12)


def test_norm_percentiles_on_memmap_and_float16(tmp_path):
    rng = np.random.default_rng(4)
    G = (rng.standard_normal((300, 16)) * rng.uniform(0.1, 5, (300, 1))).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "g.npy", mode="w+", dtype=np.float16, shape=G.shape)
    mm[:] = G
    mm.flush()
    mm = np.load(tmp_path / "g.npy", mmap_mode="r")
    picks = rng.choice(300, 40, replace=False)
    np.testing.assert_allclose(
        norm_percentiles(mm, picks, chunk_rows=64), brute_percentiles(G, picks), atol=1e-12
    )


def test_norm_percentiles_extremes_and_bad_indices():
    G = np.diag(np.arange(1.0, 11.0))  # norms 1..10, all distinct
    np.testing.assert_allclose(norm_percentiles(G, [9, 0]), [95.0, 5.0])
    assert norm_percentiles(G, []).shape == (0,)
    assert np.all(norm_percentiles(np.ones((8, 3)), [0, 5]) == 50.0)  # one shared norm
    with pytest.raises(ValueError, match="row indices"):
        norm_percentiles(G, [10])
    with pytest.raises(ValueError, match="row indices"):
        norm_percentiles(G, [-1])


def test_selection_carries_percentiles_of_the_raw_rows():
    rng = np.random.default_rng(5)
    G = (rng.standard_normal((200, 10)) * rng.uniform(0.1, 4, (200, 1))).astype(np.float32)
    sel = spice.select(G, 30)
    np.testing.assert_allclose(sel.norm_percentile, brute_percentiles(G, sel.indices), atol=1e-12)
    assert sel.to_dict()["norm_percentile"] == sel.norm_percentile.tolist()


# ----------------------------------------------------------------------------------------------
# the warning


def test_warning_threshold_is_strictly_above_80():
    assert high_norm_warning([80.0, 80.0, 80.0]) is None
    assert high_norm_warning([]) is None and high_norm_warning(None) is None
    w = high_norm_warning([80.2, 99.0, 10.0])
    assert w is not None and HIGH_NORM_WARNING in w and "80.2%" in w


def large_norm_pool(rng: np.random.Generator, n: int, k: int, d: int) -> np.ndarray:
    """k rows along distinct axes with norms 10..(10 + k), the others small and random: greedy
    log-det takes the k large rows first."""
    G = rng.standard_normal((n, d)) * 0.05
    G[:k] = 0.0
    G[np.arange(k), np.arange(k)] = 10.0 + np.arange(k)
    return G.astype(np.float32)


def test_warning_when_picks_are_the_largest_rows(tmp_path):
    rng = np.random.default_rng(6)
    G = large_norm_pool(rng, 80, 10, 16)
    run, _, sel, _ = make_run(tmp_path, G, 10)
    assert sorted(sel.indices.tolist()) == list(range(10))  # the construction did what it says
    assert float(np.median(sel.norm_percentile)) > 80
    assert HIGH_NORM_WARNING in sel.summary()
    make_report(run)
    md = (run / "report.md").read_text()
    assert HIGH_NORM_WARNING in md
    assert (run / "norms.png").stat().st_size > 0


def test_no_warning_when_picks_ignore_the_norm(tmp_path):
    rng = np.random.default_rng(7)
    G = rng.standard_normal((80, 16))
    G /= np.linalg.norm(G, axis=1, keepdims=True)  # one norm: the picks can't prefer large ones
    G *= 1.0 + 0.01 * rng.random((80, 1))  # distinct norms, unrelated to direction
    run, _, sel, _ = make_run(tmp_path, G.astype(np.float32), 16)
    assert float(np.median(sel.norm_percentile)) <= 80
    assert HIGH_NORM_WARNING not in sel.summary()
    make_report(run)
    md = (run / "report.md").read_text()
    assert HIGH_NORM_WARNING not in md
    assert "median **" in md  # the median is still reported


# ----------------------------------------------------------------------------------------------
# the report


def test_every_quantity_is_defined(mixed):
    run, *_ = mixed
    make_report(run)
    md = (run / "report.md").read_text()
    for term, definition in [
        ("ε_t = Δ_t − base_t", "gain lost because earlier picks already covered"),
        ("base_t", "the gain pick t would have had alone"),
        ("Δ_t, the marginal gain", "information pick t added given the earlier picks"),
        ("negative-aligned", "share of picks (after the first) with cosine < 0"),
        ("conflict = max(0, −alignment)", "0 when not opposed"),
        ("conflict with the picks' mean", "between a record's gradient and the mean of all picks"),
        ("log det F(S)", "how much the picks' gradients span together"),
        ("norm percentile", "share of the pool's records whose raw gradient norm"),
        ("loss", "the proxy model's mean cross-entropy on the reply"),
    ]:
        line = next((x for x in md.splitlines() if term in x), None)
        assert line is not None, term
        assert definition in line, (term, line)


def test_plot_labels_render(mixed, monkeypatch):
    """No axis label, title or legend entry shows mathtext-free Greek meant as a formula
    (a literal "Δ_t"), and every axes has something drawn on it."""
    import matplotlib.figure

    seen = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, path, *a, **kw):
        for ax in fig.axes:
            texts = [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
            leg = ax.get_legend()
            texts += [t.get_text() for t in leg.get_texts()] if leg else []
            drawn = ax.lines or ax.patches or ax.texts
            seen.append((Path(path).name, texts, bool(drawn)))
        return real(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    run, *_ = mixed
    make_report(run)
    names = {s[0] for s in seen}
    assert names == {"gains.png", "epsilon.png", "conflict.png", "pool.png", "norms.png"}
    for name, texts, drawn in seen:
        assert drawn, name
        for t in texts:
            assert not re.search(r"[ΔΣελα]_", t), (name, t)  # an underscore outside mathtext


def test_picks_table_matches_selection_and_records(mixed):
    run, store_dir, sel, recs = mixed
    make_report(run)
    rows = table_rows((run / "report.md").read_text())
    assert len(rows) == 20
    store = FeatureStore.open(store_dir)
    for t, cells in enumerate(rows):
        i = int(sel.indices[t])
        assert cells[0] == str(t + 1)
        assert cells[1] == recs[i]["id"] == store.ids[i]
        assert cells[2] == str(int(store.index.tokens[i]))
        assert cells[3] == f"{store.index.loss[i]:.3f}"
        assert float(cells[4]) == pytest.approx(sel.gains[t], rel=1e-3)
        assert cells[5].rstrip("…") in " ".join(recs[i]["prompt"].split())
        assert cells[6].replace("\\|", "|") == recs[i]["response"]


def test_distributions_equal_numpy(mixed):
    run, store_dir, sel, _ = mixed
    store = FeatureStore.open(store_dir)
    loss = np.asarray(store.index.loss)
    tokens = np.asarray(store.index.tokens, dtype=float)
    tokens[5] = np.nan  # the skipped row
    p = sel.indices
    d = distribution(loss, p)
    ok = np.isfinite(loss)
    assert d["pool"]["mean"] == pytest.approx(loss[ok].mean(), rel=1e-12)
    assert d["pool"]["median"] == pytest.approx(np.median(loss[ok]), rel=1e-12)
    assert d["pool"]["count"] == 59
    assert d["picks"]["mean"] == pytest.approx(loss[p][np.isfinite(loss[p])].mean(), rel=1e-12)
    assert d["picks"]["p90"] == pytest.approx(np.percentile(loss[p], 90), rel=1e-12)
    make_report(run)
    md = (run / "report.md").read_text()
    want_tok = np.nanmean(tokens[p]), np.nanmean(tokens)
    assert f"| loss (nats/token), mean | {loss[p].mean():.3f} | {loss[ok].mean():.3f} |" in md
    assert f"| length (tokens), mean | {want_tok[0]:.1f} | {want_tok[1]:.1f} |" in md
    assert (
        f"| length (tokens), median | {np.median(tokens[p]):.1f} | "
        f"{np.nanmedian(tokens):.1f} |" in md
    )
    # picks per source against the pool's shares
    src = np.array([SOURCES[i % 3] for i in range(60)])
    for s in SOURCES:
        c = int(np.sum(src[p] == s))
        assert f"| {s} | {c} | {c / len(p):.1%} | {np.mean(src == s):.1%} |" in md


def test_report_says_when_penalty_changed_nothing(tmp_path):
    rng = np.random.default_rng(8)
    G = np.abs(rng.standard_normal((50, 8))).astype(np.float32)  # no cosine < 0: no conflict
    run, *_ = make_run(tmp_path, G, 12, penalty=0.5)
    make_report(run)
    md = (run / "report.md").read_text()
    assert "changed nothing" in md and "picked the same 12 records in the same order" in md


def test_report_counts_picks_that_differ(tmp_path):
    rng = np.random.default_rng(9)
    G = rng.standard_normal((120, 6)).astype(np.float32)
    run, _, sel, _ = make_run(tmp_path, G, 30, penalty=50.0)
    fisher = spice.select(G, 30, conflict_penalty=0.0)
    differ = len(set(sel.indices.tolist()) - set(fisher.indices.tolist()))
    assert differ > 0  # a penalty this large must move some picks
    make_report(run)
    md = (run / "report.md").read_text()
    assert f"{differ} of the 30 picks are not among Fisher greedy's" in md


def test_report_without_data_or_store(mixed):
    run, store_dir, sel, recs = mixed
    (run.parent / "data.jsonl").rename(run.parent / "moved.jsonl")
    make_report(run)
    md = (run / "report.md").read_text()
    assert "is gone (moved or deleted)" in md and "run's own subset file" in md
    rows = table_rows(md)
    assert [r[1] for r in rows] == [recs[int(i)]["id"] for i in sel.indices[:20]]
    assert rows[0][6].replace("\\|", "|") == recs[int(sel.indices[0])]["response"]
    assert "Picks against the pool" in md  # the store still gives tokens and losses
    shutil.rmtree(store_dir)
    (run / "subset.jsonl").unlink()
    paths = make_report(run)
    md = (run / "report.md").read_text()
    assert "feature store" in md and "is gone" in md
    assert "(text not available)" in md
    assert "median **" in md  # the run recorded its norm percentiles
    assert {"gains", "epsilon", "conflict", "norms", "report"} <= set(paths)


def test_old_selection_json_gets_percentiles_from_the_store(mixed):
    run, store_dir, sel, _ = mixed
    body = json.loads((run / "selection.json").read_text())
    del body["norm_percentile"]  # as written before runs recorded them
    (run / "selection.json").write_text(json.dumps(body))
    make_report(run)
    md = (run / "report.md").read_text()
    med = float(np.median(brute_percentiles(np.asarray(FeatureStore.open(store_dir)), sel.indices)))
    assert f"median **{med:.1f}%**" in md and "computed from the feature store" in md


def test_report_when_the_data_changed(mixed):
    run, _, sel, recs = mixed
    data = run.parent / "data.jsonl"
    data.write_text("".join(json.dumps({**r, "id": "x" + r["id"]}) + "\n" for r in recs))
    make_report(run)
    md = (run / "report.md").read_text()
    assert "no longer matches the feature store" in md and "run's own subset file" in md
    assert "## Picks per source" not in md  # the pool's sources are not trusted any more
    rows = table_rows(md)
    assert rows[1][6].replace("\\|", "|") == recs[int(sel.indices[1])]["response"]
