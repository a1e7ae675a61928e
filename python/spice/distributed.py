"""``spice.distributed.select``: the selection with its rows spread over a Ray cluster.

Install with ``pip install "spice-select[ray]"``. Importing this module needs no Ray; calling
:func:`select` does, and says what to install when it is missing.

Modes: ``"exact"`` (below), ``"stochastic"`` (stochastic greedy with each sample drawn across the
shards) and ``"partition"`` (RandGreeDi: one round, (1 − 1/e)/2 in expectation at λ = 0).

``mode="exact"`` gives **the same selection as** ``spice.select(G, k, method="lazy")`` on one
machine: the same picks in the same order, bit-identical gains and log det, with the conflict
penalty, SPICE+'s early stop and k > d. Each Ray actor holds one contiguous block of rows (a
memory map of a feature store is mapped in place, only that block is read) and a C++ engine over
it (``spice._core.Stepper``). Per pick the coordinator takes the best exact candidate over the
shards (ties to the lowest row), the owner sends that row, and every shard applies the pick from
the row itself; docs/algorithm.md §12 explains why that reproduces one machine bit for bit and
what each pick sends.

A shard that dies mid-run stops the run with :class:`ShardFailedError`, which names it. With
``checkpoint="picks.json"`` the picks made so far are kept there (written every
``checkpoint_every`` seconds, at the end and on a failure), and the same call run again replays
them into fresh shards and continues: the result is the one an uninterrupted run gives.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from ._inputs import as_features, describe_bad_row, progress_says_continue
from .constraints import Constraints, guarantee
from .selection import Selection, check_options

__all__ = ["select", "ShardFailedError", "MODES"]

MODES = ("exact", "stochastic", "partition")
# RandGreeDi's factor (Barbosa, Ene, Nguyen and Ward, 2015): in expectation over the random
# partition, for a monotone submodular objective under a cardinality constraint.
PARTITION_FACTOR = (1.0 - 1.0 / math.e) / 2.0
CHECKPOINT_FORMAT = "spice-distributed-picks"
_START_TIMEOUT_S = 600.0
_PICK_FIELDS = ("indices", "q", "scores", "gains", "base", "align", "conflict")


class ShardFailedError(RuntimeError):
    """A shard's Ray actor died (or could not be reached) during a distributed selection.

    Attributes: ``shard`` (its number), ``rows`` (its global ``(start, stop)``), ``picks_done``
    (picks made before the failure) and ``checkpoint`` (the file holding them, or None).
    """

    def __init__(
        self, message: str, *, shard: int, rows: tuple, picks_done: int, checkpoint: Any
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.rows = rows
        self.picks_done = picks_done
        self.checkpoint = checkpoint


def _import_ray() -> Any:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError as e:
        raise ModuleNotFoundError(
            "spice.distributed needs Ray: pip install 'spice-select[ray]' (or pip install ray)"
        ) from e
    return ray


# ----------------------------------------------------------------------------------------------
# where the rows come from


def _open_rows(spec: tuple, lo: int, hi: int, bf16: bool) -> tuple[np.ndarray, int]:
    """This shard's rows [lo, hi) of the source, read in place where the source is a file."""
    kind, what = spec
    if kind == "array":
        arr = what  # already this shard's rows only
    else:
        from . import stores

        arr = stores.open(what).features[lo:hi]
    return as_features(arr, bf16=bf16)


def _plan(source: Any, shards: int | None, bf16: bool) -> tuple[list, int, int, int, str]:
    """(per-shard specs with their global row ranges, n, d, dtype code, description)."""
    if isinstance(source, (str, os.PathLike)):
        from . import stores

        feats = stores.open(source).features
        arr, code = as_features(feats, bf16=bf16)
        n, d = arr.shape
        s = _check_shards(shards, n)
        cuts = [n * i // s for i in range(s + 1)]
        specs = [(("store", os.fspath(source)), cuts[i], cuts[i + 1], 0) for i in range(s)]
        return specs, n, d, code, f"store {os.fspath(source)}"
    if (
        isinstance(source, (list, tuple))
        and source
        and all(isinstance(p, (str, os.PathLike)) for p in source)
    ):
        from . import stores

        if shards is not None and shards != len(source):
            raise ValueError(
                f"a list of store parts runs one shard per part: shards={shards}, "
                f"{len(source)} parts"
            )
        specs, n, d0, code0 = [], 0, None, None
        for p in source:
            arr, code = as_features(stores.open(p).features, bf16=bf16)
            if d0 is None:
                d0, code0 = arr.shape[1], code
            elif arr.shape[1] != d0 or code != code0:
                raise ValueError(
                    f"store part {os.fspath(p)} has {arr.shape[1]} columns of dtype code {code}; "
                    f"the first part has {d0} of code {code0}"
                )
            # a part's rows are read whole by its shard: local rows [0, len), offset n
            specs.append((("store", os.fspath(p)), 0, arr.shape[0], n))
            n += arr.shape[0]
        return specs, n, int(d0), int(code0), f"{len(source)} store parts"
    arr, code = as_features(source, bf16=bf16)
    n, d = arr.shape
    s = _check_shards(shards, n)
    cuts = [n * i // s for i in range(s + 1)]
    specs = [
        (
            ("array", np.ascontiguousarray(arr[cuts[i] : cuts[i + 1]])),
            0,
            cuts[i + 1] - cuts[i],
            cuts[i],
        )
        for i in range(s)
    ]
    return specs, n, d, code, "array"


def _check_shards(shards: int | None, n: int) -> int:
    if shards is None:
        raise TypeError("shards= is required: the number of Ray actors to spread the rows over")
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise ValueError(f"shards must be a positive int, got {shards!r}")
    if shards > n:
        raise ValueError(f"shards = {shards} exceeds the {n} rows")
    return int(shards)


# ----------------------------------------------------------------------------------------------
# the shard: a Ray actor around spice._core.Stepper


class _Shard:
    """One block of rows and the C++ engine over it (wrapped by ``ray.remote`` at run time)."""

    def __init__(
        self, spec: tuple, lo: int, hi: int, bf16: bool, options: dict, fail_at: int | None
    ) -> None:
        self.arr, self.code = _open_rows(spec, lo, hi, bf16)
        self.eng = _core.Stepper(self.arr, self.code, _core.Options(**options))
        self.fail_at = fail_at  # tests: the process exits when asked to apply this pick

    def info(self) -> dict:
        import socket

        return dict(
            rows=int(self.arr.shape[0]),
            d=int(self.arr.shape[1]),
            code=int(self.code),
            isa=_core.kernel_isa(),
            bad_row=int(self.eng.bad_row),
            host=socket.gethostname(),
            pid=os.getpid(),
        )

    def ping(self) -> bool:
        return True

    def best(self) -> Any:
        return self.eng.best()

    def row(self, local: int) -> np.ndarray:
        return np.array(self.arr[local])

    def rows(self, locals_: Sequence[int]) -> np.ndarray:
        return np.ascontiguousarray(self.arr[np.asarray(locals_, dtype=np.int64)])

    def sample(self, m: int, seed: int) -> Any:
        return self.eng.best_of_sample(int(m), int(seed))

    def remaining(self) -> int:
        return int(self.eng.remaining())

    def apply(self, row: np.ndarray, q: float, local: int) -> int:
        """A stochastic step's pick: applied, then the rows left to sample from."""
        if self.fail_at is not None and self.eng.picks == self.fail_at:
            os._exit(1)
        self.eng.apply_pick(row, q, local)
        return int(self.eng.remaining())

    def step(self, row: np.ndarray, q: float, local: int, want_best: bool) -> Any:
        if self.fail_at is not None and self.eng.picks == self.fail_at:
            os._exit(1)  # a test's simulated crash: the process dies without a word
        self.eng.apply_pick(row, q, local)
        return self.eng.best() if want_best else None

    def replay(self, rows: np.ndarray, qs: Sequence[float], locals_: Sequence[int]) -> list:
        """Apply recorded picks without selecting; returns the base gains of this shard's own."""
        bases = []
        for t in range(len(qs)):
            j = int(locals_[t])
            if j >= 0:
                bases.append(self.eng.base(j))
            self.eng.apply_pick(rows[t], float(qs[t]), j)
        return bases

    def top_gains(self, m: int) -> np.ndarray:
        return self.eng.top_gains(m)

    def stats(self) -> tuple[int, int]:
        return int(self.eng.evaluations), int(self.eng.dot_products)


# ----------------------------------------------------------------------------------------------
# the checkpoint of the picks


def _run_key(n: int, d: int, code: int, alpha: float, lam: float, omega: float) -> dict:
    return dict(n=n, d=d, dtype_code=code, alpha=alpha, conflict_penalty=lam, early_stop=omega)


def _load_checkpoint(path: Path, key: dict) -> dict[str, list]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from e
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if doc.get("run") != key:
        have = doc.get("run", {})
        diff = [
            f"{k}: {have.get(k)!r} there, {v!r} now" for k, v in key.items() if have.get(k) != v
        ]
        raise ValueError(
            f"checkpoint {path} was written by another run ({'; '.join(diff)}); "
            "remove it or pass another checkpoint path"
        )
    picks = doc["picks"]
    m = len(picks["indices"])
    if any(len(picks[f]) != m for f in _PICK_FIELDS):
        raise ValueError(f"checkpoint {path} is damaged (per-pick lists of different lengths)")
    return {f: list(picks[f]) for f in _PICK_FIELDS}


def _save_checkpoint(path: Path, key: dict, picks: dict[str, list], complete: bool) -> None:
    doc = dict(format=CHECKPOINT_FORMAT, version=1, run=key, complete=complete, picks=picks)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc), encoding="utf-8")  # floats as repr: exact round trip
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# the coordinator


def select(
    source: Any,
    k: int | float | None = None,
    *,
    shards: int | None = None,
    address: str | None = None,
    mode: str = "exact",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 30.0,
    alpha: float = 1.0,
    conflict_penalty: float = 0.1,
    early_stop: float | None = None,
    method: str = "lazy",
    seed: int = 0,
    threads: int | None = None,
    objective: str = "logdet",
    stochastic_eps: float = 0.01,
    progress: Any = None,
    bf16: bool = False,
    device: str | None = None,
    base_out: np.ndarray | None = None,
    spill_dir: str | os.PathLike[str] | None = None,
    budget: float | None = None,
    cost: Any = None,
    groups: Any = None,
    quotas: Any = None,
    _fail_at: tuple[int, int] | None = None,
) -> Selection:
    """Select ``k`` rows of ``source`` with the rows spread over ``shards`` Ray actors.

    Parameters
    ----------
    source : array, feature store folder, or list of store folders
        An (n, d) array (sent to the actors, one block each: for tests and moderate sizes); a
        feature store path that every Ray node can read (``spice.stores.open`` formats: spice,
        LESS, Bergson, TRAK), of which each actor maps only its own contiguous rows, in place;
        or a list of store paths (e.g. the parts of a sharded extraction), one actor per part,
        rows numbered in list order.
    k : int or float
        As in :func:`spice.select`: a count or a fraction of n.
    shards : int
        Number of actors (row blocks). Required for an array or one store; a list of parts
        runs one per part.
    address : str or None
        None starts a local Ray instance, or joins the one this process (or ``RAY_ADDRESS``)
        already uses; otherwise the cluster to connect to (``"ray://head:10001"``, ``"auto"``).
    mode : {"exact", "stochastic", "partition"}
        ``"exact"``: the one-machine lazy greedy's selection, bit for bit. ``"stochastic"``:
        stochastic greedy over the shards: each pick is the best of a uniform sample of
        ⌈(n/k)·ln(1/stochastic_eps)⌉ of the rows left, drawn across the shards (the split by a
        multivariate hypergeometric draw, so the union is a uniform subset); repeats for a seed
        and shard count, but draws other samples than ``spice.select(method="stochastic")``;
        no checkpoint. ``"partition"``
        (RandGreeDi): the rows are split into ``shards`` random parts (seeded by ``seed``), each
        part selects k on its own (one Ray task each, reading only its rows), then one greedy
        selects k from the union of their picks, and the better of that and the best part's
        selection is returned. At λ = 0 without early stop that is within (1 − 1/e)/2 of the
        best k rows in expectation over the partition (Barbosa et al., 2015); it saves work only
        when k ≪ n / shards (a warning says when k exceeds a tenth of that). No certificate
        (``opt_upper_bound`` is NaN): the merge never sees the rows the parts left out.
    checkpoint : path or None
        A JSON file keeping the picks made so far. If it exists, its picks (from a run with the
        same n, d, dtype, alpha, conflict_penalty and early_stop) are replayed first, so an
        interrupted run resumes; k may differ (greedy picks are a prefix of a longer run's).
    checkpoint_every : float
        Seconds between checkpoint writes during the run (it is also written at the end and
        when a shard fails).
    threads : int or None
        OpenMP threads per shard, and the CPUs each actor asks Ray for. None: the cluster's CPUs
        divided evenly between the shards (at least one thread each).
    alpha, conflict_penalty, early_stop, seed, stochastic_eps, progress, bf16, spill_dir
        As in :func:`spice.select` (``spill_dir`` is a directory on each worker; the progress
        callable gets 0 for evaluations while the run is in progress).
    method, objective, device, base_out, budget, cost, groups, quotas
        Accepted for a signature like :func:`spice.select`'s: method ``"lazy"`` or ``"naive"``
        (the same picks), the log-det objective on CPUs; a budget, quotas and ``base_out`` are
        not supported here yet (ValueError).

    Returns
    -------
    Selection
        As :func:`spice.select` returns; ``params`` adds ``backend="ray"``, ``mode`` and
        ``shards``. ``opt_upper_bound`` is Minoux's bound reduced over the shards (each sends its
        top |S| remaining gains): valid, but from other stale values than a one-machine run's,
        so it may differ from that run's bound in the last digits or more.

    Raises
    ------
    ShardFailedError
        An actor died; the message names the shard and where the picks so far are kept.
    ModuleNotFoundError
        Ray is not installed.
    """
    t_start = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if method not in ("lazy", "naive") and mode == "exact":
        raise ValueError(
            f"mode='exact' runs the exact greedy (method 'lazy' or 'naive', the same picks); "
            f"got method={method!r}"
        )
    if objective != "logdet":
        raise ValueError(f"the distributed selection runs the log-det objective, not {objective!r}")
    if device not in (None, "cpu"):
        raise ValueError("the distributed selection runs on CPUs (device=None or 'cpu')")
    if base_out is not None:
        raise ValueError("base_out is not supported by spice.distributed.select")
    if budget is not None or cost is not None or groups is not None or quotas is not None:
        raise ValueError(
            "token budgets and quotas are not supported by spice.distributed.select yet; "
            "use spice.select"
        )
    if k is None:
        raise TypeError("select() needs k (a row count or fraction)")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1
    ):
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    if not (isinstance(checkpoint_every, (int, float)) and checkpoint_every >= 0):
        raise ValueError(
            f"checkpoint_every must be a number of seconds >= 0, got {checkpoint_every!r}"
        )
    cb: Any = None
    if progress is True:
        from .selection import _Bar

        cb = _Bar()
    elif progress:
        if not callable(progress):
            raise TypeError("progress must be True, False/None or a callable")
        user_cb = progress
        cb = lambda *a: progress_says_continue(user_cb, user_cb(*a))  # noqa: E731

    specs, n, d, code, what = _plan(source, shards, bf16)
    kk, a, lam, omega, seps, seed64 = check_options(
        n,
        k,
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
        method="lazy",
        objective=objective,
        stochastic_eps=stochastic_eps,
        seed=seed,
    )
    spill = ""
    if spill_dir is not None:
        spill = os.fspath(spill_dir)
    if mode == "stochastic" and checkpoint is not None:
        raise ValueError(
            "checkpoint= is for mode='exact': a stochastic run's samples depend on the order "
            "its shards keep their rows in, which a replay does not rebuild"
        )
    if mode == "partition":
        if checkpoint is not None or _fail_at is not None:
            raise ValueError("checkpoint= is for mode='exact' (a partition run has one round)")
        return _partition(
            source,
            specs,
            n,
            d,
            code,
            kk,
            dict(
                alpha=a,
                conflict_penalty=lam,
                early_stop=early_stop,
                method=method,
                seed=seed,
                stochastic_eps=seps,
                bf16=bf16,
                spill_dir=spill_dir,
            ),
            address,
            threads,
            t_start,
            what,
        )
    key = _run_key(n, d, code, a, lam, omega)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    done: dict[str, list] = {f: [] for f in _PICK_FIELDS}
    if ckpt is not None and ckpt.exists():
        done = _load_checkpoint(ckpt, key)
        for f in _PICK_FIELDS:
            del done[f][kk:]

    ray = _connect(address)
    s_count = len(specs)
    total_cpus = float(ray.cluster_resources().get("CPU", 1.0))
    if threads is not None:
        cpus, nthreads = float(threads), int(threads)
        if cpus * s_count > total_cpus:
            raise ValueError(
                f"{s_count} shards of threads={threads} need {cpus * s_count:g} CPUs but the Ray "
                f"cluster has {total_cpus:g}: lower threads (or leave it None to divide the CPUs)"
            )
    else:
        cpus = (
            max(1.0, math.floor(total_cpus / s_count))
            if total_cpus >= s_count
            else total_cpus / s_count
        )
        nthreads = max(1, int(cpus))
    options = dict(k=kk, alpha=a, lam=lam, omega=omega, threads=nthreads, spill_dir=spill)
    remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(_Shard)
    actors = []
    ranges = []
    for s, (spec, lo, hi, off) in enumerate(specs):
        fail = _fail_at[1] if _fail_at is not None and _fail_at[0] == s else None
        actors.append(remote_cls.options(num_cpus=cpus).remote(spec, lo, hi, bf16, options, fail))
        ranges.append((off + lo, off + hi))
    run = _Run(ray, actors, ranges, ckpt, key, checkpoint_every)
    run.resumable = mode == "exact"
    try:
        infos = run.gather([x.info.remote() for x in actors], 0, timeout=_START_TIMEOUT_S)
        isas = {i["isa"] for i in infos}
        if len(isas) > 1:
            raise RuntimeError(
                "the shards run different kernel families "
                f"({', '.join(sorted(isas))}): their dot products would round differently; set "
                "SPICE_KERNELS to the same family (generic, avx2, avx512) on every node"
            )
        bad = [(ranges[s][0] + i["bad_row"], s) for s, i in enumerate(infos) if i["bad_row"] >= 0]
        if bad:
            g, s = min(bad)
            row = run.gather([actors[s].row.remote(g - ranges[s][0])], 0)[0]
            raise ValueError(describe_bad_row(row[None, :], code, 0, a, row_name=g))
        run.picks = done
        if done["indices"]:
            run.replay()
        t_loop = time.perf_counter()
        t_ready = t_loop - t_start  # actors started, rows mapped, norms computed, picks replayed
        if mode == "exact":
            stop = run.exact(kk, omega, cb, t_start)
        else:
            stop = run.stochastic(kk, omega, cb, t_start, n, seps, seed64)
        t_loop = time.perf_counter() - t_loop
        tops = run.gather([x.top_gains.remote(len(run.picks["indices"])) for x in actors], None)
        stats = run.gather([x.stats.remote() for x in actors], None)
        run.save(complete=True)
    finally:
        for x in actors:
            try:
                ray.kill(x)
            except Exception:  # noqa: BLE001 (already gone)
                pass

    p = run.picks
    m = len(p["indices"])
    ld = 0.0
    for g in p["gains"]:  # in pick order, as the core sums them
        ld += g
    merged = sorted((float(v) for t in tops for v in t), reverse=True)[:m]
    ub = ld
    if merged:
        extra = 0.0
        for v in merged:
            extra += v
        ub = ld + extra
    gains = np.asarray(p["gains"], dtype=np.float64)
    base = np.asarray(p["base"], dtype=np.float64)
    conflict = np.asarray(p["conflict"], dtype=np.float64)
    if mode == "stochastic":
        method = "stochastic"
    params = dict(
        alpha=a,
        conflict_penalty=lam,
        early_stop=early_stop,
        method=method,
        objective=objective,
        seed=int(seed),
        stochastic_eps=seps,
        backend="ray",
        mode=mode,
        shards=s_count,
        source=what,
        kernel_isa=isas.pop(),
        start_s=t_ready,  # seconds before the first pick
        picks_s=t_loop,  # seconds of the greedy loop
    )
    factor, note = guarantee(
        Constraints(),
        lam=lam,
        omega=omega,
        objective=objective,
        method=method,
        stop=stop,
        capped=kk < n,
    )
    return Selection(
        indices=np.asarray(p["indices"], dtype=np.int64),
        gains=gains,
        base=base,
        epsilon=gains - base,
        align=np.asarray(p["align"], dtype=np.float64),
        conflict=conflict,
        penalty=lam * conflict,
        scores=np.asarray(p["scores"], dtype=np.float64),
        logdet=ld,
        stop_reason=stop,
        opt_upper_bound=ub,
        certified_ratio=ld / ub if ub > 0 else 1.0,
        evaluations=int(sum(e for e, _ in stats)),
        n=n,
        k=kk,
        params=params,
        elapsed_s=time.perf_counter() - t_start,
        dot_products=int(sum(dp for _, dp in stats)),
        guarantee=factor,
        guarantee_note=note,
    )


class _Run:
    """The coordinator's state: the actors, their global row ranges and the picks so far."""

    def __init__(
        self, ray: Any, actors: list, ranges: list, ckpt: Path | None, key: dict, every: float
    ) -> None:
        self.ray = ray
        self.actors = actors
        self.ranges = ranges
        self.ckpt = ckpt
        self.key = key
        self.every = every
        self.picks: dict[str, list] = {f: [] for f in _PICK_FIELDS}
        self.last_save = time.monotonic()
        self.resumable = True  # exact mode: a checkpoint's picks can be replayed

    def owner(self, g: int) -> int:
        for s, (lo, hi) in enumerate(self.ranges):
            if lo <= g < hi:
                return s
        raise ValueError(f"row {g} is in no shard")

    def save(self, complete: bool = False) -> None:
        if self.ckpt is not None:
            _save_checkpoint(self.ckpt, self.key, self.picks, complete)
            self.last_save = time.monotonic()

    def gather(self, refs: list, picks_done: int | None, timeout: float | None = None) -> list:
        """ray.get, with a dead actor turned into ShardFailedError naming it."""
        ray = self.ray
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError as e:
            raise RuntimeError(
                f"the {len(self.actors)} shards did not start within {timeout:.0f} s: does the "
                "cluster have the CPUs and memory they ask for (threads=...)?"
            ) from e
        except ray.exceptions.RayError as e:
            dead = []
            for s, x in enumerate(self.actors):
                try:
                    ray.get(x.ping.remote(), timeout=60)
                except ray.exceptions.RayError:
                    dead.append(s)
            if not dead:
                raise
            t = len(self.picks["indices"]) if picks_done is None else picks_done
            if self.ckpt is not None:
                self.save()
                where = (
                    f"the {len(self.picks['indices'])} picks made so far are in {self.ckpt}; run "
                    "the same call again to resume from them"
                )
            elif self.resumable:
                where = "pass checkpoint=<file> to keep the picks of a run that fails"
            else:
                where = "a stochastic run cannot resume; run it again"
            s = dead[0]
            lo, hi = self.ranges[s]
            others = f" (and shard(s) {', '.join(map(str, dead[1:]))})" if len(dead) > 1 else ""
            raise ShardFailedError(
                f"shard {s} of {len(self.actors)} (rows {lo}..{hi - 1}){others} died after {t} "
                f"picks: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; {where}",
                shard=s,
                rows=(lo, hi),
                picks_done=t,
                checkpoint=self.ckpt,
            ) from e

    def replay(self) -> None:
        """Apply the recorded picks in fresh shards (no selection), checking they are theirs."""
        ray = self.ray
        idx = [int(g) for g in self.picks["indices"]]
        m = len(idx)
        owners = [self.owner(g) for g in idx]
        rows: np.ndarray | None = None
        for s, x in enumerate(self.actors):
            mine = [t for t in range(m) if owners[t] == s]
            if not mine:
                continue
            got = self.gather([x.rows.remote([idx[t] - self.ranges[s][0] for t in mine])], 0)[0]
            if rows is None:
                rows = np.empty((m, got.shape[1]), dtype=got.dtype)
            rows[mine] = got
        ref = ray.put(rows)
        qs = [float(v) for v in self.picks["q"]]
        bases = self.gather(
            [
                x.replay.remote(
                    ref,
                    qs,
                    [idx[t] - self.ranges[s][0] if owners[t] == s else -1 for t in range(m)],
                )
                for s, x in enumerate(self.actors)
            ],
            0,
        )
        want = self.picks["base"]
        for s in range(len(self.actors)):
            mine = [t for t in range(m) if owners[t] == s]
            for t, b in zip(mine, bases[s]):
                if b != want[t]:
                    raise ValueError(
                        f"checkpoint {self.ckpt}: pick {t} (row {idx[t]}) has gain "
                        f"{want[t]!r} alone there but {b!r} in these rows: another data set"
                    )

    def exact(self, kk: int, omega: float, cb: Any, t_start: float) -> str:
        """The greedy from the current step to k; returns the stop reason."""
        actors, ranges, p = self.actors, self.ranges, self.picks
        t = len(p["indices"])
        if t >= kk:
            return "budget"
        cands = self.gather([x.best.remote() for x in actors], None)
        last_cb = time.monotonic()
        while True:
            best = None  # (score, global index, shard, candidate)
            for s, c in enumerate(cands):
                if c is None:
                    continue
                g = ranges[s][0] + int(c[0])
                if best is None or c[1] > best[0] or (c[1] == best[0] and g < best[1]):
                    best = (c[1], g, s, c)
            if best is None:
                return "exhausted"
            _, g, o, c = best
            local, score, delta, base, align, conflict, q = c
            if omega > 0.0 and t >= 1 and delta <= omega * p["gains"][0]:
                return "early_stop"
            for f, v in zip(_PICK_FIELDS, (g, q, score, delta, base, align, conflict)):
                p[f].append(v)
            t += 1
            want = t < kk
            row_ref = actors[o].row.remote(int(local))
            cands = self.gather(
                [
                    x.step.remote(row_ref, q, int(local) if s == o else -1, want)
                    for s, x in enumerate(actors)
                ],
                None,
            )
            now = time.monotonic()
            if self.ckpt is not None and now - self.last_save >= self.every:
                self.save()
            if cb is not None and (now - last_cb >= 0.2 or not want):
                last_cb = now
                if not cb(t, kk, 0, time.perf_counter() - t_start):
                    return "cancelled"
            if not want:
                return "budget"

    def stochastic(
        self, kk: int, omega: float, cb: Any, t_start: float, n: int, eps: float, seed: int
    ) -> str:
        """Stochastic greedy over the shards: each step a uniform sample of the rows left, split
        between the shards by a multivariate hypergeometric draw (so the union is a uniform
        subset), each shard drawing its part with its own seed; both seeded by (seed, step)."""
        actors, ranges, p = self.actors, self.ranges, self.picks
        sample = max(1, math.ceil((n / max(1, kk)) * math.log(1.0 / eps)))
        counts = self.gather([x.remaining.remote() for x in actors], None)
        last_cb = time.monotonic()
        t = len(p["indices"])
        while t < kk:
            r = int(sum(counts))
            rng = np.random.default_rng([seed, t])
            m = min(sample, r)
            split = rng.multivariate_hypergeometric(np.asarray(counts, dtype=np.int64), m)
            seeds = rng.integers(0, 2**63, size=len(actors))
            cands = self.gather(
                [x.sample.remote(int(split[s]), int(seeds[s])) for s, x in enumerate(actors)],
                None,
            )
            if all(c is None for c in cands) and m < r:  # the sample all dead: every row left
                cands = self.gather(
                    [x.sample.remote(int(counts[s]), int(seeds[s])) for s, x in enumerate(actors)],
                    None,
                )
            best = None
            for s, c in enumerate(cands):
                if c is not None:
                    g = ranges[s][0] + int(c[0])
                    if best is None or c[1] > best[0] or (c[1] == best[0] and g < best[1]):
                        best = (c[1], g, s, c)
            if best is None:
                return "exhausted"
            _, g, o, c = best
            local, score, delta, base, align, conflict, q = c
            if omega > 0.0 and t >= 1 and delta <= omega * p["gains"][0]:
                return "early_stop"
            for f, v in zip(_PICK_FIELDS, (g, q, score, delta, base, align, conflict)):
                p[f].append(v)
            t += 1
            row_ref = actors[o].row.remote(int(local))
            counts = self.gather(
                [
                    x.apply.remote(row_ref, q, int(local) if s == o else -1)
                    for s, x in enumerate(actors)
                ],
                None,
            )
            now = time.monotonic()
            if cb is not None and (now - last_cb >= 0.2 or t == kk):
                last_cb = now
                if not cb(t, kk, 0, time.perf_counter() - t_start):
                    return "cancelled"
        return "budget"


# ----------------------------------------------------------------------------------------------
# mode="partition": RandGreeDi


def _local_greedy(spec: tuple, idx: np.ndarray, bf16: bool, k: int, kw: dict) -> tuple:
    """One part's greedy: its k picks (global rows), their rows and the part's Selection."""
    from .selection import select as one_select

    kind, what = spec
    if kind == "array":
        rows = what
    else:
        from . import stores

        rows = np.ascontiguousarray(stores.open(what).features[idx])  # this part's rows only
    arr, code = as_features(rows, bf16=bf16)
    sel = one_select(arr, min(k, arr.shape[0]), **kw)
    return idx[sel.indices], np.ascontiguousarray(arr[sel.indices]), code, sel


def _connect(address: str | None) -> Any:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level="WARNING")
    return ray


def _partition(
    source: Any,
    specs: list,
    n: int,
    d: int,
    code: int,
    kk: int,
    kw: dict,
    address: str | None,
    threads: int | None,
    t_start: float,
    what: str,
) -> Selection:
    """RandGreeDi: a seeded random partition of the rows into S parts, k picks on each part
    alone (one Ray task per part), then one greedy of k over the union of those picks; the
    better of that and the best part's own picks is returned."""
    import dataclasses
    import warnings

    if isinstance(source, (list, tuple)) and source and not hasattr(source, "shape"):
        raise ValueError("mode='partition' takes an array or one feature store, not store parts")
    s_count = len(specs)
    if kk * s_count * 10 > n:
        warnings.warn(
            f"mode='partition' with k = {kk} on {s_count} parts of about {n // s_count} rows: "
            "k is not much smaller than n / shards (below a tenth), so each part selects a "
            "large share of its rows and the merge round is nearly a one-machine greedy over "
            "them; the guarantee is unchanged, the saving is lost",
            stacklevel=3,
        )
    perm = np.random.default_rng(int(kw["seed"]) & 0xFFFFFFFFFFFFFFFF).permutation(n)
    parts = [np.sort(perm[s::s_count]) for s in range(s_count)]
    if isinstance(source, (str, os.PathLike)):
        part_specs = [("store", os.fspath(source))] * s_count
    else:
        arr, _ = as_features(source, bf16=kw["bf16"])
        part_specs = [("array", np.ascontiguousarray(arr[p])) for p in parts]
    ray = _connect(address)
    nthreads = int(threads) if threads is not None else 1
    local_kw = dict(
        kw, threads=nthreads, method="lazy" if kw["method"] == "naive" else kw["method"]
    )
    task = ray.remote(num_cpus=nthreads, max_retries=0)(_local_greedy)
    refs = [task.remote(part_specs[s], parts[s], kw["bf16"], kk, local_kw) for s in range(s_count)]
    try:
        outs = ray.get(refs)
    except ray.exceptions.RayError as e:
        raise RuntimeError(f"a part of the partition run failed: {e}") from e
    picked = np.concatenate([o[0] for o in outs])
    rows = np.concatenate([o[1] for o in outs])
    order = np.argsort(picked, kind="stable")  # ties in the merge go to the lowest global row
    union, urows = picked[order], np.ascontiguousarray(rows[order])
    from .selection import select as one_select

    merge = one_select(urows, min(kk, union.size), **dict(local_kw, bf16=code == 3))
    value = [float(np.sum(o[3].scores)) for o in outs]
    b = int(np.argmax(value))
    if float(np.sum(merge.scores)) >= value[b]:
        won, idx, src = merge, union[merge.indices], "merge"
    else:
        won, idx, src = outs[b][3], outs[b][0], f"part {b}"
    lam, omega = float(kw["conflict_penalty"]), kw["early_stop"]
    if lam > 0 or omega is not None or kw["method"] == "stochastic":
        factor = float("nan")
        note = "partition (RandGreeDi) with a penalty, early stop or stochastic parts: no factor"
    else:
        factor = PARTITION_FACTOR
        note = (
            "partition (RandGreeDi): (1 - 1/e)/2 of the best set of size k in expectation over "
            "the random partition (monotone submodular, lambda = 0)"
        )
    params = dict(
        won.params, backend="ray", mode="partition", shards=s_count, source=what, winner=src
    )
    return dataclasses.replace(
        won,
        indices=np.asarray(idx, dtype=np.int64),
        n=n,
        k=kk,
        opt_upper_bound=float("nan"),
        certified_ratio=float("nan"),
        evaluations=int(sum(o[3].evaluations for o in outs) + merge.evaluations),
        dot_products=int(sum(o[3].dot_products for o in outs) + merge.dot_products),
        params=params,
        elapsed_s=time.perf_counter() - t_start,
        guarantee=factor,
        guarantee_note=note,
    )
