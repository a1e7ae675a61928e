"""A cost model of spice.distributed's exact mode, its terms measured here, checked, then projected.

    PYTHONPATH=python python bench/distributed_cost.py            # measure, check, project
    PYTHONPATH=python python bench/distributed_cost.py --quick    # smaller grid (a minute or two)

Per pick, the coordinator sends the pick to the S shards and waits for all of their next
candidates (one round trip, docs/distributed.md), so

    per_pick = rt(S, d) + compute(S, n/S, d, k)

- rt(S, d): the round trip of one call to each of S actors that carries a row of d values down
  and one up (the shape of a step), measured on a local ray.cluster_utils.Cluster (a head and 2
  more nodes of 1 CPU each, RAY_AUTH_MODE=disabled) with actors that do nothing else, for S = 1..8
  and several d; fitted as r0 + r1·S + r2·S·d·b (b bytes a value).
- compute: each shard's step (apply the pick, then its lazy step to its next exact best),
  measured in this process on spice._core.Stepper shards run as the coordinator runs them, one
  thread each: the slowest shard's step per pick, or, when there are more shards than cores
  (as here, 3 shards on 2 cores), the sum over shards divided by the cores, whichever is larger.
  Fitted per shard as a0 + a1·d·D + a2·d·min(t, d), D the catch-up dot products a shard does per
  pick (the engine counts them) and t the pick number (the append: O(t·d) to t = d, then O(d²)).
- bytes per pick: S calls' framing (measured: the echo actors' bytes per call with no row) plus
  the rows, S·d·b down and U·d·b up (U, rows sent up per pick, from sel.params["rows_sent"]).
- memory per node: n/S·d·b of rows (mapped from a store: page cache) + 88 bytes a row of state
  + k·d·8 of w rows (in a spill_dir file instead, if given) + d²·8 of M⁻¹ once k > d.

The model's prediction is checked against mode="exact" on the same local cluster at the sizes that
run here (ratio measured / predicted). Then it is projected, with a stated network round trip and
bandwidth added to rt, to 10⁷ and 10⁸ rows on 8, 32 and 128 nodes, k = 10 % of n, d = 1024 and
8192, float16 rows: for exact mode and for partition mode (each part a one-machine greedy of k over
n/S rows, then one greedy of k over the union of their picks on one node). The projection
extrapolates D (dot products per pick) as a power law of n/S fitted at k = n/10 far past the sizes
measured, and uses one thread per shard: it is a projection, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from datagen import clustered_features  # noqa: E402
from distributed_bench import _io  # noqa: E402

import spice  # noqa: E402
import spice.distributed as sd  # noqa: E402
from spice import _core  # noqa: E402

CORES = len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------------------------
# compute: S Stepper shards in this process, stepped as the coordinator steps them


def shard_steps(G: np.ndarray, k: int, shards: int, lam: float) -> dict:
    """Per-pick step seconds of each shard (apply + next best), dot products, append shape."""
    n, d = G.shape
    code = {np.float32: 0, np.float64: 1, np.float16: 2}[G.dtype.type]
    cuts = [n * i // shards for i in range(shards + 1)]
    opts = _core.Options(k=k, alpha=1.0, conflict_penalty=lam, early_stop=0.0, threads=1)
    st = [
        _core.Stepper(np.ascontiguousarray(G[cuts[s] : cuts[s + 1]]), code, opts)
        for s in range(shards)
    ]
    cands = [x.best() for x in st]
    times = np.zeros((k, shards))
    apply_s = np.zeros((k, shards))
    for t in range(k):
        best = None
        for s, c in enumerate(cands):
            if c is not None:
                g = cuts[s] + c[0]
                if best is None or c[1] > best[0] or (c[1] == best[0] and g < best[1]):
                    best = (c[1], g, s, c)
        if best is None:
            times, apply_s = times[:t], apply_s[:t]
            break
        _, g, o, c = best
        row = np.array(G[g])
        for s, x in enumerate(st):
            t0 = time.perf_counter()
            x.apply_pick(row, c[6], c[0] if s == o else -1)
            t1 = time.perf_counter()
            cands[s] = x.best() if t + 1 < k else None
            times[t, s] = time.perf_counter() - t0
            apply_s[t, s] = t1 - t0
    m = len(times)
    crit = np.maximum(times.max(axis=1), times.sum(axis=1) / CORES)
    return dict(
        per_shard=times.mean(axis=0),  # seconds per pick, each shard
        apply=apply_s.mean(axis=0),  # of which applying the pick (the append)
        crit=float(crit.mean()),  # the pick's critical path on this machine's cores
        dots=np.array([x.dot_products for x in st]) / max(1, m),  # per pick, each shard
        append=float(np.mean(np.minimum(np.arange(1, m + 1), d))) * d,  # mean d·min(t, d)
        picks=m,
    )


def fit_compute(points: list) -> tuple[float, float, float]:
    """c_app, c0, c_dot: apply = c_app·d·min(t, d) (the append), and the lazy step to the next
    best = c0 + c_dot·d·D, fitted apart (least squares, each over the shards' per-pick means)."""
    d, dots, append, secs, app = (np.asarray(v, dtype=float) for v in zip(*points))
    c_app = float(np.sum(append * app) / np.sum(append * append))
    X = np.stack([np.ones_like(d), d * dots], axis=1)
    (c0, c_dot), *_ = np.linalg.lstsq(X, secs - app, rcond=None)
    return c_app, float(c0), float(c_dot)


# ----------------------------------------------------------------------------------------------
# round trip: actors that only answer, on a local multi-node cluster


class _Echo:
    """A step's shape without its work: a row in, a candidate and (optionally) a row out."""

    def __init__(self, d: int) -> None:
        self.row = np.ones(d, dtype=np.float32)

    def step(self, row: np.ndarray, q: float, local: int, up: bool) -> tuple:
        return (local, 0.5, 0.5, 0.5, 0.5, 0.0, q), (self.row[: row.size].copy() if up else None)


def round_trips(ray, actors: list, d: int, up: bool, rounds: int) -> tuple[float, float, float]:
    """Seconds, driver bytes and driver CPU seconds (all its threads: Ray's included) per round
    of one step call to each of the actors."""
    row = np.ones(d, dtype=np.float32)
    for _ in range(20):
        ray.get([x.step.remote(row, 0.1, 0, up) for x in actors])
    b0, t0, c0 = _io(), time.perf_counter(), time.process_time()
    for i in range(rounds):
        ray.get([x.step.remote(row, 0.1, i, up) for x in actors])
    t1, c1, b1 = time.perf_counter(), time.process_time(), _io()
    return (t1 - t0) / rounds, (b1 - b0) / rounds, (c1 - c0) / rounds


def fit_rt(points: list) -> np.ndarray:
    """r0, r1, r2 of rt = r0 + r1·S + r2·S·d·4 (float32 rows down and up)."""
    X = [[1.0, S, S * d * 4] for S, d, _ in points]
    coef, *_ = np.linalg.lstsq(np.asarray(X), np.asarray([s for _, _, s in points]), rcond=None)
    return coef


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    ap.add_argument("--k", type=int, default=400, help="picks of the checked runs")
    ap.add_argument("--checks", default="20000x64,50000x128", help="n x d of the checked runs")
    ap.add_argument("--rtt-ms", type=float, default=0.2, help="projection: network round trip")
    ap.add_argument("--gbps", type=float, default=10.0, help="projection: driver's link, Gb/s")
    ap.add_argument("--node-gb", type=float, default=256.0, help="projection: a node's memory")
    a = ap.parse_args()
    checks = [tuple(int(x) for x in s.split("x")) for s in a.checks.split(",")]
    if a.quick:
        checks = [(10000, 64)]
    lam = 0.1
    print(f"{CORES} cores here; load average {os.getloadavg()[0]:.1f}")

    # 1. compute, per shard, over a grid of n/S and d at k = n/10, and at the checked runs
    print("\n## compute: one step per shard (apply + lazy step), one thread, this process")
    print("| n | d | S | k | ms/pick per shard | critical ms/pick | dot products/pick/shard |")
    print("|---|---|---|---|---|---|---|")
    grid = [(n, d) for n in (5000, 10000, 20000, 40000) for d in (32, 128)]
    if a.quick:
        grid = [(5000, 32), (10000, 32), (5000, 128)]
    points, dots_fit, comp = [], [], {}
    for n, d in grid:
        G = clustered_features(n, d, seed=1, dtype=np.float32)
        r = shard_steps(G, n // 10, 2, lam)
        for s in range(2):
            points.append((d, r["dots"][s], r["append"], r["per_shard"][s], r["apply"][s]))
        dots_fit.append((n / 2, float(r["dots"].mean())))
        print(
            f"| {n} | {d} | 2 | {n // 10} | {1e3 * r['per_shard'].mean():.3f} | "
            f"{1e3 * r['crit']:.3f} | {r['dots'].mean():.0f} |",
            flush=True,
        )
    for n, d in checks:
        G = clustered_features(n, d, seed=0, dtype=np.float32)
        for S in (2, 3):
            r = shard_steps(G, a.k, S, lam)
            comp[(n, d, S)] = r
            for s in range(S):
                points.append((d, r["dots"][s], r["append"], r["per_shard"][s], r["apply"][s]))
            print(
                f"| {n} | {d} | {S} | {a.k} | {1e3 * r['per_shard'].mean():.3f} | "
                f"{1e3 * r['crit']:.3f} | {r['dots'].mean():.0f} |",
                flush=True,
            )
    a2, a0, a1 = fit_compute(points)
    ns, ds = np.array(dots_fit).T
    beta, log_c = np.polyfit(np.log(ns), np.log(ds), 1)
    print(
        f"\nfit: step = {1e6 * a0:.2f} µs + {1e9 * a1:.4f} ns · d·D + {1e9 * a2:.4f} ns · "
        f"d·min(t, d); D = {math.exp(log_c):.3g} · (n/S)^{beta:.3f} at k = n/10"
    )

    # 2. round trips and bytes, on a local cluster of 3 nodes
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    src = os.path.dirname(os.path.dirname(os.path.abspath(spice.__file__)))
    if ray.is_initialized():
        ray.shutdown()
    node = dict(num_cpus=1, object_store_memory=200 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        for _ in range(2):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(
            address=cluster.address,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1"}},
        )
        time.sleep(2.0)
        b0, t0 = _io(), time.monotonic()
        time.sleep(3.0)
        idle = (_io() - b0) / (time.monotonic() - t0)
        print(f"\n## round trip: S echo actors, one call each a round (driver idle {idle:.0f} B/s)")
        print("| S | d | row up | ms/round | driver CPU ms/round | driver bytes/round |")
        print("|---|---|---|---|---|---|")
        rounds = 200 if a.quick else 400
        rts, frame, cpu_call, byts = [], [], [], {}
        counts = (1, 2, 3, 4, 6, 8) if not a.quick else (1, 2, 3)
        echo = ray.remote(num_cpus=0, max_restarts=0)(_Echo)
        pool = [echo.options(scheduling_strategy="SPREAD").remote(1024) for _ in range(counts[-1])]
        ray.get([x.step.remote(np.ones(1, np.float32), 0.1, 0, False) for x in pool])
        for S in counts:
            for d in (64, 1024):
                for up in (False, True):
                    sec, byt, cpu = round_trips(ray, pool[:S], d, up, rounds)
                    byt -= idle * sec
                    byts[(S, d, up)] = byt
                    cpu_call.append(cpu / S)
                    if up:
                        rts.append((S, d, sec))
                    else:
                        frame.append(byt / S - d * 4)  # a call's framing, the row down removed
                    print(
                        f"| {S} | {d} | {up} | {1e3 * sec:.3f} | {1e3 * cpu:.3f} | {byt:.0f} |",
                        flush=True,
                    )
        for x in pool:
            ray.kill(x)
        r0, r1, r2 = fit_rt(rts)
        f_call = float(np.median(frame))
        # a row sent up costs its bytes and this much more (numpy's header, gRPC)
        f_row = float(
            np.median([(byts[(S, d, True)] - byts[(S, d, False)]) / S - d * 4 for S, d, _ in rts])
        )
        cpu1 = float(np.median(cpu_call))
        rt1 = float(np.median([sec for S, _, sec in rts if S == 1]))
        print(
            f"\nfit: rt = {1e3 * r0:.3f} ms + {1e3 * r1:.3f} ms · S + {1e9 * r2:.3f} ns · S·d·4; "
            f"framing {f_call:.0f} B a call, {f_row:.0f} B more a row sent up; driver CPU "
            f"{1e3 * cpu1:.3f} ms a call; rt(1) = {1e3 * rt1:.3f} ms"
        )

        # 3. the model against mode="exact" on this cluster
        print("\n## check: mode='exact' on the 3-node cluster against the model")
        print(
            "| n × d | S | k | rt model ms | compute ms | predicted ms/pick | measured ms/pick "
            "| measured / predicted | rows up/pick | bytes/pick predicted | measured |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        shares = []  # per losing shard and pick: its candidate changed, so its row went up
        for n, d in checks:
            G = clustered_features(n, d, seed=0, dtype=np.float32)
            for S in (2, 3):
                marks: list = []

                def mark(t, k, ev, el, marks=marks):
                    if not marks or t == k:
                        c = time.monotonic()
                        marks.append((t, c, _io(), time.monotonic() - c))

                sel = sd.select(G, a.k, shards=S, conflict_penalty=lam, progress=mark)
                (t1, c1, b1, e1), (t2, c2, b2, e2) = marks[0], marks[-1]
                meas = (sel.params["picks_s"] - e1 - e2) / a.k
                rt = r0 + r1 * S + r2 * S * d * 4
                cpu = comp[(n, d, S)]["crit"]
                pred = rt + cpu
                up = sel.params["rows_sent"] / a.k
                bpred = S * f_call + S * d * 4 + up * (d * 4 + f_row)
                bmeas = (b2 - b1 - idle * (c2 - c1)) / (t2 - t1)
                print(
                    f"| {n} × {d} | {S} | {a.k} | {1e3 * rt:.3f} | {1e3 * cpu:.3f} | "
                    f"{1e3 * pred:.3f} | {1e3 * meas:.3f} | {meas / pred:.2f} | {up:.2f} | "
                    f"{bpred:.0f} | {bmeas:.0f} |",
                    flush=True,
                )
                shares.append((up - 1) / (S - 1))
    finally:
        ray.shutdown()
        cluster.shutdown()

    up_share = max(shares) if shares else 1.0
    print(f"\nrows sent up per pick: 1 + (S - 1) · {up_share:.2f} (the largest share measured)")
    project(a, (a0, a1, a2), (math.exp(log_c), beta), (rt1, cpu1), (f_call, f_row), up_share)


def project(a, comp, dots, rt, frames, up_share) -> None:
    """Exact and partition modes at 10⁷ and 10⁸ rows on 8, 32, 128 nodes (a projection).

    A round trip on S nodes: the driver's CPU per call times S (serial: one driver submits and
    receives every call) plus one call's round trip here, rt(1), plus the network's round trip
    and the bytes over the driver's link. The local slope of rt in S is not used: here the S
    actors share 2 cores with the driver, on a cluster each has its node."""
    a0, a1, a2 = comp
    c, beta = dots
    rt1, cpu1 = rt
    f_call, f_row = frames
    b = 2  # float16 rows
    bw = a.gbps * 1e9 / 8
    node = a.node_gb * 1e9

    def step(rows: float, d: int, k: float) -> float:
        """A shard's step, seconds: the fitted terms at k = n/10, mean d·min(t, d) over k."""
        mean_app = d * (d - d * d / (2 * k)) if k > d else d * (k + 1) / 2
        return a0 + a1 * d * c * rows**beta + a2 * mean_app

    print(
        f"\n## projection (not a measurement): k = n/10, float16 rows, network round trip "
        f"{a.rtt_ms} ms, {a.gbps:g} Gb/s at the driver, {a.node_gb:g} GB a node, one thread per "
        "shard"
    )
    print(
        "| n | d | nodes | exact: ms/pick | exact: time | exact: GB moved | exact: GB/node "
        "(rows + w) | partition: time | partition: GB/part node, merge node |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (1e7, 1e8):
        k = n / 10
        for d in (1024, 8192):
            for S in (8, 32, 128):
                ns = n / S
                up = 1 + (S - 1) * up_share
                byts = S * f_call + S * d * b + up * (d * b + f_row)
                per = cpu1 * S + rt1 + a.rtt_ms / 1e3 + byts / bw + step(ns, d, k)
                w = k * d * 8
                flag = " **> node**" if w + 88 * ns + d * d * 8 > node else ""
                # partition: each part selects min(k, n/S) of its n/S rows, the merge k of the
                # union of their picks, on one node, after the picks' rows are sent to it
                kp = min(k, ns)
                union = min(S * kp, n)
                t_part = kp * step(ns, d, kp) + union * d * b / bw + k * step(union, d, k)
                m_part = ns * d * b + 88 * ns + kp * d * 8 + d * d * 8
                m_merge = union * d * b + 88 * union + k * d * 8 + d * d * 8
                # a part's rows are mapped from the store; the merge's arrive as an array
                pflag = " **> node**" if max(m_part - ns * d * b, m_merge) > node else ""
                print(
                    f"| 10^{round(math.log10(n))} | {d} | {S} | {1e3 * per:.2f} | "
                    f"{_dur(k * per)} | {k * byts / 1e9:.0f} | "
                    f"{ns * d * b / 1e9:.1f} + {w / 1e9:.0f}{flag} | {_dur(t_part)} | "
                    f"{m_part / 1e9:.0f}, {m_merge / 1e9:.0f}{pflag} |"
                )


def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


if __name__ == "__main__":
    main()
