"""spice.distributed.select on a multi-node Ray cluster on this machine (ray.cluster_utils.Cluster,
3 nodes of 1 CPU each): shards placed one per node with requests that fit a node, store paths
resolved on the driver, a stalled shard named; and a stale record of a dead cluster ignored.

Skipped without Ray (pip install "spice-select[ray]").
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_distributed_select import assert_same, write_store

import spice
import spice.distributed as sd

from select_data import clustered

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (spice-select[ray])"
)

SRC = str(Path(spice.__file__).resolve().parent.parent)


def _pythonpath() -> str:
    return os.pathsep.join([SRC] + [p for p in [os.environ.get("PYTHONPATH")] if p])


@pytest.fixture(scope="module")
def cluster():
    """A head and two more nodes, 1 CPU each, joined by this process; always torn down."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    node = dict(num_cpus=1, object_store_memory=100 * 2**20)
    c = Cluster(initialize_head=True, head_node_args=node)
    try:
        for _ in range(2):
            c.add_node(**node)
        c.wait_for_nodes()
        ray.init(
            address=c.address,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": _pythonpath(), "OMP_NUM_THREADS": "1"}},
        )
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.slow
def test_shards_are_spread_one_per_node_with_requests_that_fit(cluster, monkeypatch):
    # a request of floor(3 CPUs / 1 shard) = 3 fits no node: it would wait, here 60 s, then fail
    monkeypatch.setattr(sd.connect, "_START_TIMEOUT_S", 60.0)
    G = clustered(3, 600, 12)
    one = spice.select(G, 30, conflict_penalty=0.1, method="lazy")
    d = sd.select(G, 30, shards=3, conflict_penalty=0.1)
    assert_same(d, one)
    pl = d.params["placement"]
    assert pl["strategy"] == "STRICT_SPREAD" and pl["cpus_per_shard"] == 1.0
    assert len(set(pl["nodes"])) == 3 and all(pl["nodes"])
    alone = sd.select(G, 30, shards=1, conflict_penalty=0.1)
    assert_same(alone, one)
    assert alone.params["placement"]["cpus_per_shard"] == 1.0


@pytest.mark.slow
def test_a_relative_store_path_is_resolved_on_the_driver(cluster, tmp_path, monkeypatch):
    G = clustered(4, 500, 12).astype(np.float16)  # the store's dtype
    write_store(tmp_path / "feats", G)
    one = spice.select(G, 25, conflict_penalty=0.1, method="lazy")
    monkeypatch.chdir(tmp_path)  # the workers' directory is not this one
    d = sd.select("feats", 25, shards=2, conflict_penalty=0.1)
    assert_same(d, one)
    assert d.params["source"] == f"store {tmp_path / 'feats'}"


@pytest.mark.slow
def test_a_stalled_shard_is_named_within_the_deadline(cluster, tmp_path):
    G = clustered(5, 450, 10)
    ck = tmp_path / "picks.json"
    t0 = time.monotonic()
    with pytest.raises(sd.ShardFailedError, match=r"shard 1 of 3 \(rows 150\.\.299\) on node") as e:
        sd.select(G, 30, shards=3, checkpoint=ck, shard_timeout=3, _fail_at=(1, 6, "stop"))
    assert time.monotonic() - t0 < 60
    assert "did not answer within 3 s" in str(e.value) and e.value.shard == 1
    assert e.value.picks_done >= 6 and ck.exists()


@pytest.mark.slow
def test_a_stale_record_of_a_dead_cluster_starts_a_private_instance(tmp_path):
    # Ray's own ray.init() would try to join the address in ray_current_cluster for 30 s
    tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        Path(tmp, "ray").mkdir()
        Path(tmp, "ray", "ray_current_cluster").write_text("127.0.0.1:9\n")  # nothing listens
        code = (
            "import numpy as np, spice.distributed as d\n"
            "s = d.select(np.eye(6, 4, dtype=np.float32), 2, shards=1)\n"
            "print(s.params['cluster'])\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(RAY_TMPDIR=tmp, PYTHONPATH=_pythonpath(), RAY_AUTH_MODE="disabled")
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert "started a private local Ray instance" in out.stdout
        assert "127.0.0.1:9, which does not answer" in out.stdout
        assert time.monotonic() - t0 < 60
    finally:
        subprocess.run(["rm", "-rf", tmp], check=False)


def test_failure_detection_pings_all_shards_at_once():
    # a fake Ray whose every ping takes 1 s: one deadline for all, not 1 s per shard
    class Ref:
        def __init__(self, i: int, t: float) -> None:
            self.i, self.t = i, t

        def hex(self) -> str:
            return str(self.i)

    class Ping:
        def __init__(self, i: int) -> None:
            self.i = i

        def remote(self) -> Ref:
            return Ref(self.i, time.monotonic() + 1.0)

    class Actor:
        def __init__(self, i: int) -> None:
            self.ping = Ping(i)

    class FakeRay:
        class exceptions:
            RayError = RuntimeError

        @staticmethod
        def wait(refs, num_returns, timeout):
            end = time.monotonic() + timeout
            time.sleep(max(0.0, min(end, max(r.t for r in refs)) - time.monotonic()))
            now = time.monotonic()
            return [r for r in refs if r.t <= now], [r for r in refs if r.t > now]

        @staticmethod
        def get(ref, timeout=None):
            return True

    specs = [(None, 0, 10, 10 * i) for i in range(6)]
    run = sd._Run(FakeRay, [Actor(i) for i in range(6)], specs, None, {}, 30.0, None)
    t0 = time.monotonic()
    assert run.unresponsive(5.0) == []
    assert time.monotonic() - t0 < 3.0
    assert run.unresponsive(0.2) == list(range(6))
