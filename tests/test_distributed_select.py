"""spice.distributed.select on a local Ray instance: mode="exact" is spice.select(method="lazy"),
bit for bit; a killed shard is named, and a rerun resumes from the checkpointed picks.

Skipped without Ray (pip install "spice-select[ray]"), except the checks that need none.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spice
import spice.distributed as sd

import helpers
from select_data import clustered, gaussian

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (spice-select[ray])")


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (2 CPUs), which finds this checkout's spice."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = not ray.is_initialized()
    if started:
        src = str(Path(spice.__file__).resolve().parent.parent)
        path = os.pathsep.join([src] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        ray.init(
            address="local",  # a new instance, never one another process recorded in /tmp/ray
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
        )
    yield ray
    if started:
        ray.shutdown()


def assert_same(d: spice.Selection, one: spice.Selection) -> None:
    """Identical picks and bit-identical per-pick numbers and log det, from Ray."""
    helpers.assert_same(d, one, rtol=0, atol=0)
    assert d.logdet <= d.opt_upper_bound
    assert d.params["backend"] == "ray" and d.params["mode"] == "exact"


def stepped(G, k, shards, lam, omega=0.0, alpha=1.0, replay=((), ())):
    """The coordinator's loop in-process over spice._core.Stepper shards (no Ray). ``replay``:
    (rows, qs) of picks applied first without selecting. Returns picks, gains, scores, qs."""
    from spice import _core

    n = G.shape[0]
    code = {np.float32: 0, np.float64: 1, np.float16: 2}[G.dtype.type]
    cuts = [n * i // shards for i in range(shards + 1)]
    opts = _core.Options(k=k, alpha=alpha, conflict_penalty=lam, early_stop=omega, threads=1)
    st = [_core.Stepper(G[cuts[s] : cuts[s + 1]], code, opts) for s in range(shards)]

    def apply(g, q, local, o):
        for s in range(shards):
            st[s].apply_pick(np.array(G[g]), q, local if s == o else -1)

    idx, qs = list(replay[0]), list(replay[1])
    for g, q in zip(idx, qs):
        o = max(s for s in range(shards) if cuts[s] <= g)
        apply(g, q, g - cuts[o], o)
    gains, scores = [], []
    while len(idx) < k:
        best = None
        for s in range(shards):
            c = st[s].best()
            if c is not None:
                g = cuts[s] + c[0]
                if best is None or c[1] > best[0] or (c[1] == best[0] and g < best[1]):
                    best = (c[1], g, s, c)
        if best is None:
            break
        _, g, o, c = best
        if omega > 0 and gains and c[2] <= omega * gains[0]:
            break
        idx.append(g)
        qs.append(c[6])
        gains.append(c[2])
        scores.append(c[1])
        apply(g, c[6], c[0], o)
    return np.array(idx), np.array(gains), np.array(scores), qs


@pytest.mark.parametrize(
    "dtype,n,d,k,lam,omega,shards",
    [
        (np.float32, 500, 16, 60, 0.1, 0.0, 3),
        (np.float16, 500, 16, 60, 0.0, 0.0, 2),
        (np.float32, 300, 5, 250, 0.1, 0.0, 3),  # k > d: w from M^{-1}
        (np.float32, 400, 8, 100, 0.1, 0.5, 4),  # early stop
        (np.float32, 1400, 6, 1100, 0.1, 0.0, 3),  # rows > 1024 steps behind: M^{-1} bounds
    ],
)
def test_stepper_shards_in_process_equal_one_machine(dtype, n, d, k, lam, omega, shards):
    G = clustered(n + d, n, d).astype(dtype)
    one = spice.select(G, k, conflict_penalty=lam, early_stop=omega or None, method="lazy")
    idx, gains, scores, _ = stepped(G, k, shards, lam, omega)
    np.testing.assert_array_equal(idx, one.indices)
    assert gains.tobytes() == one.gains.tobytes() and scores.tobytes() == one.scores.tobytes()


def test_stepper_replayed_picks_continue_as_one_machine():
    # the first 30 picks replayed into fresh shards (another shard count), then selection goes on
    G = clustered(3, 400, 12)
    one = spice.select(G, 80, conflict_penalty=0.1, method="lazy")
    idx, _, _, qs = stepped(G, 30, 3, 0.1)
    more, gains, _, _ = stepped(G, 80, 2, 0.1, replay=(idx, qs))
    np.testing.assert_array_equal(more, one.indices)
    assert gains.tobytes() == one.gains[30:].tobytes()


def test_stepper_refuses_what_would_break_its_state():
    from spice import _core

    G = gaussian(0, 20, 4)
    st = _core.Stepper(G, 0, _core.Options(k=2))
    with pytest.raises(ValueError, match="d items of G's dtype"):
        st.apply_pick(np.zeros(4), 1.0)  # float64 row for float32 shard
    c = st.best()
    assert st.best() == c  # the same step: the same candidate
    st.apply_pick(G[c[0]].copy(), c[6], c[0])
    with pytest.raises(ValueError, match="not a row that can be picked"):
        st.apply_pick(G[c[0]].copy(), c[6], c[0])  # already picked
    st.apply_pick(G[1].copy(), 1.0, -1)
    with pytest.raises(RuntimeError, match="more picks than k"):
        st.apply_pick(G[2].copy(), 1.0, -1)
    assert st.picks == 2 and st.top_gains(5).shape == (5,)


@needs_ray
@pytest.mark.parametrize(
    "dtype,lam,shards,omega,d,k",
    [
        (np.float32, 0.0, 2, None, 24, 60),
        (np.float32, 0.1, 3, None, 8, 150),  # k > d: the w rows come from M^{-1}
        (np.float16, 0.0, 3, None, 24, 60),
        (np.float16, 0.1, 2, 0.4, 24, 60),  # SPICE+'s early stop
    ],
)
def test_exact_equals_one_machine_on_arrays(ray_local, dtype, lam, shards, omega, d, k):
    G = clustered(7, 900, d).astype(dtype)
    kw = dict(alpha=0.5, conflict_penalty=lam, early_stop=omega)
    one = spice.select(G, k, method="lazy", **kw)
    dist = sd.select(G, k, shards=shards, **kw)
    assert_same(dist, one)
    assert len(dist) == k or dist.stop_reason == "early_stop"


@pytest.fixture
def calls(monkeypatch):
    """The actor methods the driver calls, by name (Ray's ActorMethod._remote, counted)."""
    from collections import Counter

    from ray.actor import ActorMethod

    seen: Counter = Counter()
    orig = ActorMethod._remote

    def counted(self, *a, **kw):
        seen[self._method_name] += 1
        return orig(self, *a, **kw)

    monkeypatch.setattr(ActorMethod, "_remote", counted)
    return seen


@needs_ray
@pytest.mark.parametrize("dtype,shards", [(np.float16, 2), (np.float32, 3)])
def test_exact_sends_each_pick_in_one_call_per_shard(ray_local, calls, dtype, shards):
    # one hop: the winner's row comes with its candidate, so no pick fetches it from its owner
    # before the step (that fetch was k more calls, each a round trip through the driver)
    G = clustered(8, 600, 12).astype(dtype)
    k = 40
    one = spice.select(G, k, conflict_penalty=0.1, method="lazy")
    d = sd.select(G, k, shards=shards, conflict_penalty=0.1)
    assert_same(d, one)
    assert calls["row"] == 0 and calls["rows"] == 0
    assert calls["best_with_row"] == shards and calls["step"] == shards * k
    # every pick's row went up once at least; a shard whose candidate stayed did not resend it
    assert k <= d.params["rows_sent"] < shards * k


@needs_ray
def test_stochastic_sends_the_row_with_the_sample(ray_local, calls):
    G = clustered(6, 900, 12)
    s = sd.select(G, 30, shards=2, mode="stochastic", seed=5, conflict_penalty=0.1)
    assert calls["row"] == 0
    assert calls["apply"] == 2 * 30 and calls["sample"] >= 2 * 30
    assert s.logdet == pytest.approx(spice.logdet(G, s.indices, alpha=1.0), rel=1e-9)


def write_store(path: Path, rows: np.ndarray, part=(0, 1), shard_rows=128) -> Path:
    """A spice feature store of ``rows`` (all of them, or part i of N: chunks c mod N = i)."""
    from spice.store import StoreWriter

    d = rows.shape[1]
    w = StoreWriter(
        path,
        {"projection": {"dim": d}},
        total_rows=len(rows),
        dim=d,
        shard_rows=shard_rows,
        part=part,
    )
    w.prepare()
    for c in w.chunks:
        a, b = w.chunk_rows(c)
        index = [
            {"row": r, "id": f"r{r}", "tokens": 3, "loss_tokens": 1, "loss": 1.0}
            for r in range(a, b)
        ]
        w.write_chunk(c, rows[a:b], index)
    w.finalize()
    return path


@pytest.mark.slow
@needs_ray
def test_exact_on_a_feature_store_and_on_store_parts(ray_local, tmp_path):
    G = clustered(11, 700, 16)
    write = write_store

    whole = write(tmp_path / "whole", G)
    feats = spice.stores.open(whole).features
    one = spice.select(feats, 50, conflict_penalty=0.1, method="lazy")
    assert_same(sd.select(whole, 50, shards=3, conflict_penalty=0.1), one)
    parts = [write(tmp_path / "p0", G[:300]), write(tmp_path / "p1", G[300:])]
    d = sd.select(parts, 50, conflict_penalty=0.1)
    assert_same(d, one)
    assert d.params["shards"] == 2


@needs_ray
def test_killed_shard_is_named_and_the_rerun_resumes_identically(ray_local, tmp_path):
    G = clustered(5, 600, 12)
    one = spice.select(G, 40, conflict_penalty=0.1, method="lazy")
    ck = tmp_path / "picks.json"
    with pytest.raises(sd.ShardFailedError, match=r"shard 1 of 3 \(rows 200\.\.399\)") as e:
        sd.select(G, 40, shards=3, conflict_penalty=0.1, checkpoint=ck, _fail_at=(1, 15))
    assert e.value.shard == 1 and e.value.rows == (200, 400)
    assert str(ck) in str(e.value)
    saved = json.loads(ck.read_text())["picks"]["indices"]
    assert 15 <= len(saved) <= 16 and saved == one.indices[: len(saved)].tolist()
    # another shard count replays the same picks: the state after a pick depends on picks only
    d = sd.select(G, 40, shards=2, conflict_penalty=0.1, checkpoint=ck)
    assert_same(d, one)
    assert json.loads(ck.read_text())["complete"] is True


@needs_ray
def test_failure_without_checkpoint_says_how_to_keep_the_picks(ray_local):
    G = gaussian(1, 300, 8)
    with pytest.raises(sd.ShardFailedError, match="shard 0 of 2.*checkpoint=") as e:
        sd.select(G, 20, shards=2, _fail_at=(0, 3))
    # the whole of Ray's report, not its first line: how the worker died
    assert "Worker exit type" in str(e.value), str(e.value)
    # one of spice's errors, still a RuntimeError for code that caught that before
    assert isinstance(e.value, spice.SpiceError) and isinstance(e.value, RuntimeError)
    assert sd.ShardFailedError is spice.errors.ShardFailedError


@needs_ray
def test_more_cpus_than_the_cluster_has_is_refused_at_once(ray_local):
    with pytest.raises(ValueError, match="need 6 CPUs but the Ray cluster has 2"):
        sd.select(gaussian(0, 60, 4), 5, shards=3, threads=2)


@needs_ray
def test_bad_row_is_named_with_its_global_index(ray_local):
    G = gaussian(2, 200, 8)
    G[150, 3] = np.nan
    with pytest.raises(ValueError, match="first bad row 150"):
        sd.select(G, 10, shards=2)


@pytest.mark.slow
@needs_ray
def test_stochastic_repeats_for_a_seed_and_is_a_valid_selection(ray_local):
    G = clustered(5, 2000, 16)
    kw = dict(shards=3, mode="stochastic", conflict_penalty=0.1)
    a = sd.select(G, 50, seed=3, **kw)
    b = sd.select(G, 50, seed=3, **kw)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.gains.tobytes() == b.gains.tobytes()
    assert len(set(a.indices.tolist())) == 50 and a.params["method"] == "stochastic"
    assert a.logdet == pytest.approx(spice.logdet(G, a.indices, alpha=1.0), rel=1e-9)
    exact = spice.select(G, 50, conflict_penalty=0.1)
    assert a.logdet >= 0.95 * exact.logdet and a.opt_upper_bound >= exact.logdet
    with pytest.raises(ValueError, match="checkpoint= is for mode='exact'"):
        sd.select(G, 5, checkpoint="x.json", **kw)
    with pytest.raises(sd.ShardFailedError, match="shard 2 of 3.*cannot resume"):
        sd.select(G, 20, seed=3, _fail_at=(2, 4), **kw)


@needs_ray
def test_partition_is_within_its_guarantee_and_repeats_for_a_seed(ray_local):
    G = clustered(9, 1200, 16)
    one = spice.select(G, 20, conflict_penalty=0.0)
    p = sd.select(G, 20, shards=3, mode="partition", conflict_penalty=0.0, seed=1)
    assert len(p) == 20 and len(set(p.indices.tolist())) == 20
    assert p.logdet == pytest.approx(spice.logdet(G, p.indices, alpha=1.0), rel=1e-9)
    # (1 - 1/e)/2 of OPT in expectation; OPT <= the one-machine certificate
    assert p.logdet >= sd.PARTITION_FACTOR * one.opt_upper_bound
    assert p.guarantee == sd.PARTITION_FACTOR and p.params["mode"] == "partition"
    again = sd.select(G, 20, shards=3, mode="partition", conflict_penalty=0.0, seed=1)
    np.testing.assert_array_equal(again.indices, p.indices)
    with pytest.warns(UserWarning, match="not much smaller than n / shards"):
        q = sd.select(G, 100, shards=3, mode="partition", conflict_penalty=0.1, seed=2)
    assert len(q) == 100 and np.isnan(q.guarantee) and np.isnan(q.opt_upper_bound)


def test_checkpoint_of_another_run_is_refused(tmp_path):
    G = gaussian(4, 100, 8)
    ck = tmp_path / "picks.json"
    key = sd._run_key(100, 8, 0, 1.0, 0.1, 0.0)
    sd._save_checkpoint(ck, key, {f: [] for f in sd._PICK_FIELDS}, False)
    with pytest.raises(ValueError, match="alpha: 1.0 there, 2.0 now"):
        sd.select(G, 5, shards=2, alpha=2.0, checkpoint=ck)


def test_options_object_gives_the_keywords_picks(ray_local):
    G = clustered(11, 600, 16).astype(np.float32)
    kw = dict(alpha=0.5, conflict_penalty=0.3, early_stop=0.4, seed=3)
    by_keywords = sd.select(G, 40, shards=2, **kw)
    by_options = sd.select(G, 40, shards=2, options=spice.SelectOptions(**kw))
    assert_same(by_options, by_keywords)
    assert by_options.params["conflict_penalty"] == 0.3
    assert by_options.params["early_stop"] == 0.4


def test_options_object_is_refused_with_keywords_or_unit_rows():
    G = gaussian(4, 50, 4)
    with pytest.raises(TypeError, match="alpha"):
        sd.select(G, 5, shards=2, alpha=1.0, options=spice.SelectOptions())
    with pytest.raises(ValueError, match="normalize"):
        sd.select(G, 5, shards=2, options=spice.SelectOptions(normalize="unit"))
    with pytest.raises(TypeError, match="spill_dir"):
        sd.select(G, 5, shards=2, spill_dir="/tmp", options=spice.SelectOptions(spill_dir="/tmp"))
    with pytest.raises(ValueError, match="conflict_penalty"):
        sd.select(G, 5, shards=2, conflict_penalty=-1.0)


def test_unsupported_options_are_refused_before_any_work():
    G = gaussian(4, 50, 4)
    with pytest.raises(ValueError, match="mode"):
        sd.select(G, 5, shards=2, mode="bogus")
    with pytest.raises(ValueError, match="budgets and quotas"):
        sd.select(G, 5, shards=2, budget=10.0, cost=np.ones(50))
    with pytest.raises(ValueError, match="exact greedy"):
        sd.select(G, 5, shards=2, method="stochastic")
    with pytest.raises(ValueError, match="shards"):
        sd.select(G, 5, shards=60)


def test_module_imports_without_ray_and_says_what_to_install():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import numpy as np, spice.distributed as d\n"
        "try:\n"
        "    d.select(np.ones((4, 2), np.float32), 1, shards=2)\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ)
    src = str(Path(spice.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "spice-select[ray]" in out.stdout


@pytest.mark.slow
@needs_ray
def test_part_stores_are_numbered_by_the_rows_they_hold(ray_local, tmp_path):
    # --shard i/N parts hold chunks c mod N = i: part 0 rows 0..99, 200..299, ...; the picks
    # must be reported as those rows, not as positions in the parts laid end to end
    G = clustered(13, 650, 12).astype(np.float16)  # the stores' dtype
    one = spice.select(G, 40, conflict_penalty=0.1, method="lazy")
    parts = [write_store(tmp_path / f"part{i}", G, part=(i, 3), shard_rows=100) for i in range(3)]
    d = sd.select(parts[::-1], 40, conflict_penalty=0.1)  # any order: the rows say where they go
    assert_same(d, one)
    with pytest.raises(ValueError, match="a part is missing"):
        sd.select(parts[:2], 5)
    with pytest.raises(ValueError, match="given twice"):
        sd.select([parts[0], parts[0], parts[1], parts[2]], 5)


@pytest.mark.slow
@needs_ray
def test_a_start_up_failure_keeps_the_checkpoint_and_says_why(ray_local, tmp_path):
    G = clustered(5, 500, 12)
    one = spice.select(G, 40, conflict_penalty=0.1, method="lazy")
    ck = tmp_path / "picks.json"
    sd.select(G, 20, shards=2, conflict_penalty=0.1, checkpoint=ck)
    with pytest.raises(sd.ShardFailedError) as e:
        sd.select(G, 40, shards=2, checkpoint=ck, spill_dir=tmp_path / "absent")
    msg = str(e.value)
    assert "while starting, before any pick" in msg and "unchanged (20 picks)" in msg, msg
    assert f"FileNotFoundError: spill_dir {tmp_path / 'absent'} is not a directory" in msg, msg
    assert isinstance(e.value.cause, FileNotFoundError)
    assert json.loads(ck.read_text())["picks"]["indices"] == one.indices[:20].tolist()
    assert_same(sd.select(G, 40, shards=2, conflict_penalty=0.1, checkpoint=ck), one)


@pytest.mark.slow
@needs_ray
def test_a_smaller_k_does_not_shrink_the_checkpoint(ray_local, tmp_path):
    G = clustered(6, 400, 10)
    one = spice.select(G, 30, conflict_penalty=0.1, method="lazy")
    ck = tmp_path / "picks.json"
    sd.select(G, 30, shards=2, conflict_penalty=0.1, checkpoint=ck)
    few = sd.select(G, 10, shards=3, conflict_penalty=0.1, checkpoint=ck)
    np.testing.assert_array_equal(few.indices, one.indices[:10])
    assert json.loads(ck.read_text())["picks"]["indices"] == one.indices.tolist()


@needs_ray
def test_an_interrupt_saves_the_picks(ray_local, tmp_path):
    G = clustered(8, 500, 12)
    one = spice.select(G, 60, conflict_penalty=0.1, method="lazy")
    ck = tmp_path / "picks.json"

    def ctrl_c(t, k, evals, secs):
        if t >= 12:
            raise KeyboardInterrupt
        return True

    with pytest.raises(KeyboardInterrupt):  # checkpoint_every=1 h: only the interrupt saves
        sd.select(G, 60, shards=2, checkpoint=ck, checkpoint_every=3600, progress=ctrl_c)
    saved = json.loads(ck.read_text())["picks"]["indices"]
    assert len(saved) >= 12 and saved == one.indices[: len(saved)].tolist()


@needs_ray
def test_an_address_other_than_the_connected_one_is_refused(ray_local):
    with pytest.raises(ValueError, match="already connected to the Ray instance"):
        sd.select(gaussian(0, 60, 4), 5, shards=2, address="192.0.2.1:6379")


def test_checkpoint_is_written_fsynced_then_renamed(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    ck = tmp_path / "picks.json"
    key = sd._run_key(10, 4, 0, 1.0, 0.1, 0.0)
    picks = {f: [1] for f in sd._PICK_FIELDS}
    sd._save_checkpoint(ck, key, picks, False)
    assert calls[:2] == ["fsync", "replace"], calls  # the data is on disk before it is named
    assert json.loads(ck.read_text())["picks"] == picks
    assert [p.name for p in tmp_path.iterdir()] == ["picks.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "nodes,shards,threads,want",
    [
        ([1.0, 1.0], 1, None, (1.0, 1, "STRICT_SPREAD")),  # not floor(2 / 1) = 2: no node has 2
        ([1.0, 1.0, 1.0], 3, None, (1.0, 1, "STRICT_SPREAD")),
        ([4.0, 4.0], 2, None, (4.0, 4, "STRICT_SPREAD")),
        ([8.0, 2.0], 2, None, (2.0, 2, "STRICT_SPREAD")),
        ([2.0], 3, None, (0.6666, 1, "SPREAD")),  # 3 shards share 2 CPUs
        ([4.0, 1.0], 3, None, (1.0, 1, "SPREAD")),
        ([4.0, 4.0], 2, 3, (3.0, 3, "STRICT_SPREAD")),
    ],
)
def test_each_shard_asks_for_cpus_that_fit_on_one_node(nodes, shards, threads, want):
    c, t, strategy = sd._fit_cpus(nodes, shards, threads)
    assert (c, t, strategy) == want
    room = sum(int(x / c + 1e-9) for x in nodes)
    assert c <= max(nodes) and room >= shards


@pytest.mark.slow
@needs_ray
def test_exact_with_spill_dirs_equals_one_machine(ray_local, tmp_path):
    # k > d: the w rows from M^{-1}; one directory per shard, then one for all
    G = clustered(9, 600, 8).astype(np.float32)
    one = spice.select(G, 120, conflict_penalty=0.1, method="lazy")
    dirs = [tmp_path / f"node{s}" for s in range(3)]
    for p in dirs:
        p.mkdir()
    assert_same(sd.select(G, 120, shards=3, conflict_penalty=0.1, spill_dir=dirs), one)
    assert_same(sd.select(G, 120, shards=2, conflict_penalty=0.1, spill_dir=dirs[0]), one)
    with pytest.raises(ValueError, match="lists 3 paths for 2 shards"):
        sd.select(G, 10, shards=2, spill_dir=dirs)
    with pytest.raises(ValueError, match="takes one spill_dir path"):
        sd.select(G, 10, shards=3, mode="partition", spill_dir=dirs)
    with pytest.raises(TypeError, match=r"spill_dir\[1\] must be a non-empty path"):
        sd.select(G, 10, shards=2, spill_dir=[dirs[0], ""])
    with pytest.raises(TypeError, match="a list of one path per shard"):
        sd.select(G, 10, shards=2, spill_dir=3)


def test_a_shard_with_spill_dir_keeps_its_w_rows_in_a_file_there(tmp_path):
    # in-process: the shard's engine maps an unlinked file in its spill_dir (seen in the
    # process's mappings), and picks as the plain shard does
    G = clustered(2, 200, 6)
    opts = dict(k=30, alpha=1.0, conflict_penalty=0.1, early_stop=0.0, threads=1, spill_dir="")
    plain = sd._Shard(("array", G), 0, 200, False, opts, None)
    spilled = sd._Shard(("array", G), 0, 200, False, dict(opts, spill_dir=str(tmp_path)), None)
    plain.open(), spilled.open()
    maps = Path("/proc/self/maps")
    if maps.exists():
        held = [ln for ln in maps.read_text().splitlines() if str(tmp_path / "spice-w-") in ln]
        assert held and all("(deleted)" in ln for ln in held), held
    for _ in range(30):
        a, b = plain.best(), spilled.best()
        assert a == b
        for sh in (plain, spilled):
            sh.step(np.array(G[a[0]]), a[6], a[0], False)


def test_a_spill_dir_the_shard_cannot_write_is_named(tmp_path, monkeypatch):
    opts = dict(
        k=2, alpha=1.0, conflict_penalty=0.0, early_stop=0.0, threads=1, spill_dir=str(tmp_path)
    )
    monkeypatch.setattr(os, "access", lambda p, m: False)  # root may write anywhere
    sh = sd._Shard(("array", gaussian(0, 10, 4)), 0, 10, False, opts, None)
    with pytest.raises(PermissionError, match="is not writable on node"):
        sh.open()


def test_a_spill_dir_without_room_for_the_w_rows_is_named_with_its_node(tmp_path):
    # k x d x 8 bytes (here 32 PB) cannot be reserved: refused before any pick, node named
    opts = dict(
        k=10**15,
        alpha=1.0,
        conflict_penalty=0.0,
        early_stop=0.0,
        threads=1,
        spill_dir=str(tmp_path),
    )
    sh = sd._Shard(("array", gaussian(0, 10, 4)), 0, 10, False, opts, None)
    with pytest.raises(RuntimeError, match=r"reserve 32000000000000000 bytes.*on node .*k = "):
        sh.open()


def test_threads_that_fit_no_node_are_refused():
    with pytest.raises(ValueError, match="do not fit on the nodes"):
        sd._fit_cpus([2.0, 2.0, 2.0], 2, 3)


def test_a_shard_checks_its_node_before_mapping_rows(tmp_path):
    # in-process (no Ray): what each node checks before any pick, named with the node
    opts = dict(k=2, alpha=1.0, conflict_penalty=0.0, early_stop=0.0, threads=1, spill_dir="")
    gone = sd._Shard(("store", str(tmp_path / "gone")), 0, 10, False, opts, None)
    with pytest.raises(FileNotFoundError, match=r"gone does not exist on node .*mounted"):
        gone.open()
    bad_spill = dict(opts, spill_dir=str(tmp_path / "nospill"))
    sh = sd._Shard(("array", gaussian(0, 10, 4)), 0, 10, False, bad_spill, None)
    with pytest.raises(FileNotFoundError, match="nospill is not a directory on node"):
        sh.open()
    ok = sd._Shard(("array", gaussian(0, 10, 4)), 0, 10, False, opts, None).open()
    assert ok["rows"] == 10 and ok["d"] == 4 and ok["pid"] == os.getpid()
