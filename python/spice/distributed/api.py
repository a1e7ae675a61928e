"""The public entry, :func:`spice.distributed.select`: checks, plan, placement of the shards, the
run, and the Selection it returns."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._inputs import progress_says_continue
from ..constraints import Constraints, guarantee
from ..options import DEFAULT, SelectOptions, resolve_k
from ..selection import Selection, _options_of
from .checkpoint import _PICK_FIELDS, _load_checkpoint, _run_key
from .connect import _connect, _placed, _start
from .coordinator import _ExactSteps, _Run, _StochasticSteps
from .partition import _partition
from .plan import _abs, _fit_cpus, _node_cpus, _plan, _spill_dirs

MODES = ("exact", "stochastic", "partition")


def select(
    source: Any,
    k: int | float | None = None,
    *,
    shards: int | None = None,
    address: str | None = None,
    mode: str = "exact",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: float = 30.0,
    alpha: float = DEFAULT,
    conflict_penalty: float = DEFAULT,
    early_stop: float | None = DEFAULT,
    method: str = DEFAULT,
    seed: int = DEFAULT,
    threads: int | None = DEFAULT,
    objective: str = DEFAULT,
    stochastic_eps: float = DEFAULT,
    progress: Any = None,
    bf16: bool = DEFAULT,
    device: str | None = None,
    base_out: np.ndarray | None = None,
    spill_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    budget: float | None = None,
    cost: Any = None,
    groups: Any = None,
    quotas: Any = None,
    shard_timeout: float | None = 600.0,
    options: SelectOptions | None = None,
    _fail_at: tuple | None = None,
) -> Selection:
    """Select ``k`` rows of ``source`` with the rows spread over ``shards`` Ray actors.

    Parameters
    ----------
    source : array, feature store folder, or list of store folders
        An (n, d) array (sent to the actors, one block each: for tests and moderate sizes); a
        feature store path that every Ray node can read (``spice.stores.open`` formats: spice,
        LESS, Bergson, TRAK), of which each actor maps only its own contiguous rows, in place;
        or a list of store paths, one actor per part: the parts of one extraction written with
        ``--shard i/N`` (chunks c mod N = i), in any order, all N of them, numbered as the rows
        they hold (the merged store's numbering); or whole stores, numbered in list order.
        Relative paths are resolved against the driver's working directory.
    k : int or float
        As in :func:`spice.select`: a count or a fraction of n.
    shards : int
        Number of actors (row blocks). Required for an array or one store; a list of parts
        runs one per part.
    address : str or None
        None: the instance this process already uses, else the cluster ``RAY_ADDRESS`` names,
        else the one ``ray start`` recorded on this machine if it answers, else a private local
        instance (``sel.params["cluster"]`` says which). Otherwise the cluster to connect to
        (``"host:6379"``, ``"ray://head:10001"``, ``"auto"``); refused (ValueError) when this
        process is already connected to another one.
    mode : {"exact", "stochastic", "partition"}
        ``"exact"``: the one-machine lazy greedy's selection, bit for bit. ``"stochastic"``:
        stochastic greedy over the shards: each pick is the best of a uniform sample of
        ⌈(n/k)·ln(1/stochastic_eps)⌉ of the rows left, drawn across the shards (the split by a
        multivariate hypergeometric draw, so the union is a uniform subset); repeats for a seed
        and shard count, but draws other samples than ``spice.select(method="stochastic")``;
        no checkpoint. ``"partition"`` (RandGreeDi): each row goes to one of ``shards`` parts
        independently and uniformly at random (seeded by ``seed``; an empty part is dropped),
        each part selects k on its own (one Ray task each, reading only its rows), then one
        greedy selects k from the union of their picks, and the better of that and the best
        part's selection is returned. At λ = 0 without early stop that is within (1 − 1/e)/2
        of the best k rows in expectation over the partition (Barbosa et al., 2015), whatever k
        is; it saves work only when k ≪ n / shards (a warning says when k exceeds a tenth of
        that). No certificate (``opt_upper_bound`` is NaN): the merge never sees the rows the
        parts left out.
    checkpoint : path or None
        A JSON file keeping the picks made so far. If it exists, its picks (from a run with the
        same n, d, dtype, alpha, conflict_penalty and early_stop) are replayed first, so an
        interrupted run resumes; k may differ (greedy picks are a prefix of a longer run's).
        Written atomically (fsync, then rename); it never shrinks: a smaller k or a run that
        fails early leaves the longer list in the file.
    checkpoint_every : float
        Seconds between checkpoint writes during the run (it is also written at the end, when a
        shard fails and on KeyboardInterrupt or any other exception in the loop).
    shard_timeout : float or None
        Seconds a shard may take to answer one call (a pick's step, the replay) before it is
        named as stalled in a ShardFailedError (default 600; None waits for ever). Start-up
        (placement, mapping the rows) has its own limit of 600 s.
    threads : int or None
        OpenMP threads per shard, and the CPUs each actor asks Ray for (must fit on one node).
        None: with at least ``shards`` nodes, the whole CPUs of the smallest of the ``shards``
        largest nodes, one shard per node; otherwise the largest equal request the nodes hold
        ``shards`` of (a fraction of a CPU when there are fewer CPUs than shards), one thread.
    spill_dir : path, list of paths, or None
        Where each shard keeps its k × d float64 w rows: in an unlinked temporary file mapped
        into memory, as :func:`spice.select` does, instead of anonymous memory (every shard of
        the exact and stochastic modes holds all k of them). One path: the same directory on
        every node (node-local scratch); a list: one path per shard, in shard order (not for
        ``mode="partition"``, whose parts and merge take one path). Each shard checks its
        directory exists and is writable on its node before any pick. The picks are the same
        with or without it, bit for bit.
    alpha, conflict_penalty, early_stop, seed, stochastic_eps, progress, bf16
        As in :func:`spice.select` (the progress callable gets 0 for evaluations while the run
        is in progress).
    method, objective, device, base_out, budget, cost, groups, quotas
        Accepted for a signature like :func:`spice.select`'s: method ``"lazy"`` or ``"naive"``
        (the same picks), the log-det objective on CPUs; a budget, quotas and ``base_out`` are
        not supported here yet (ValueError).
    options : SelectOptions or None
        The settings as one object, as :func:`spice.select` takes them (alpha,
        conflict_penalty, early_stop, method, seed, threads, objective, stochastic_eps, bf16,
        spill_dir); refused (TypeError) together with any of those keywords. Unit rows
        (``normalize='unit'``) are not supported here (ValueError). Left out, the keywords
        not given take SelectOptions' defaults (alpha 1.0, conflict_penalty 0.1, early_stop
        None, method "lazy", seed 0, threads None, objective "logdet", stochastic_eps 0.01,
        bf16 False).

    Returns
    -------
    Selection
        As :func:`spice.select` returns; ``params`` adds ``backend="ray"``, ``mode``,
        ``shards``, ``cluster`` (which Ray instance was used) and ``placement`` (strategy, CPUs
        and threads per shard, and each shard's node id, host and pid). ``opt_upper_bound`` is
        Minoux's bound reduced over the shards (each sends its
        top |S| remaining gains): valid, but from other stale values than a one-machine run's,
        so it may differ from that run's bound in the last digits or more.

    Raises
    ------
    ShardFailedError
        An actor died, failed (at start-up: a store missing on its node, no spice there, ...)
        or stalled; the message names the shard, its node and the cause, and where the picks so
        far are kept.
    ModuleNotFoundError
        Ray is not installed.
    """
    t_start = time.perf_counter()
    if options is not None and spill_dir is not None and options.spill_dir is not None:
        raise TypeError("select() got spill_dir= and options.spill_dir: give one of them")
    o = _options_of(
        options,
        alpha=alpha,
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
        method=method,
        seed=seed,
        threads=threads,
        objective=objective,
        stochastic_eps=stochastic_eps,
        bf16=bf16,
    )
    if o.normalize != "none":
        raise ValueError(
            f"normalize={o.normalize!r} is not supported by spice.distributed (its shards "
            "score raw rows); use spice.select for unit rows"
        )
    spill_dir = o.spill_dir if spill_dir is None else spill_dir
    _check_args(
        mode=mode,
        method=o.method,
        objective=o.objective,
        device=device,
        base_out=base_out,
        budget=budget,
        cost=cost,
        groups=groups,
        quotas=quotas,
        k=k,
        threads=o.threads,
        shard_timeout=shard_timeout,
        checkpoint_every=checkpoint_every,
    )
    cb = _progress_callable(progress)

    specs, n, d, code, what = _plan(source, shards, o.bf16)
    kk = resolve_k(k, n)
    spills = _spill_dirs(spill_dir, len(specs), mode)
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
                alpha=o.alpha,
                conflict_penalty=o.conflict_penalty,
                early_stop=o.early_stop,
                method=o.method,
                seed=o.seed,
                stochastic_eps=o.stochastic_eps,
                bf16=o.bf16,
                spill_dir=spill_dir,
            ),
            address,
            o.threads,
            t_start,
            what,
        )
    key = _run_key(n, d, code, o.alpha, o.conflict_penalty, o.core_early_stop)
    ckpt = Path(_abs(checkpoint)) if checkpoint is not None else None
    kept: dict[str, list] = {f: [] for f in _PICK_FIELDS}
    if ckpt is not None and ckpt.exists():
        kept = _load_checkpoint(ckpt, key)
    # a smaller k replays a prefix; the file keeps all its picks (see _Run.save)
    done = {f: v[:kk] for f, v in kept.items()}

    ray, how = _connect(address)
    s_count = len(specs)
    cpus, nthreads, strategy = _fit_cpus(_node_cpus(ray), s_count, o.threads)
    options = dict(
        k=kk,
        alpha=o.alpha,
        conflict_penalty=o.conflict_penalty,
        early_stop=o.core_early_stop,
        threads=nthreads,
    )
    with _placed(ray, s_count, cpus, strategy) as (pg, actors):
        run = _Run(ray, actors, specs, ckpt, key, checkpoint_every, shard_timeout)
        run.kept = kept
        run.resumable = mode == "exact"
        infos, isa = _start(run, pg, specs, cpus, o.bf16, options, spills, _fail_at, o.alpha, code)
        if mode == "exact":
            steps: Any = _ExactSteps(run)
        else:
            steps = _StochasticSteps(run, n, kk, o.stochastic_eps, o.seed64)
        stop, tops, stats, t_ready, t_loop = _run_greedy(
            run, done, steps, kk, o.core_early_stop, cb, t_start
        )

    params = dict(
        alpha=o.alpha,
        conflict_penalty=o.conflict_penalty,
        early_stop=o.early_stop,
        method="stochastic" if mode == "stochastic" else o.method,
        objective=o.objective,
        seed=int(o.seed),
        stochastic_eps=o.stochastic_eps,
        backend="ray",
        mode=mode,
        shards=s_count,
        source=what,
        kernel_isa=isa,
        cluster=how,
        placement=dict(
            strategy=strategy,
            cpus_per_shard=cpus,
            threads_per_shard=nthreads,
            nodes=[i["node"] for i in infos],
            hosts=[i["host"] for i in infos],
            pids=[i["pid"] for i in infos],
        ),
        # rows the shards sent up with their candidates (each pick also sends one row down to
        # every shard): what the picks moved, for bench/distributed_bench.py's bytes per pick
        rows_sent=int(sum(r for _, _, r in stats)),
        start_s=t_ready,  # seconds before the first pick
        picks_s=t_loop,  # seconds of the greedy loop
    )
    return _selection(
        run.picks, tops, stats, stop, n, kk, o.conflict_penalty, o.core_early_stop, params, t_start
    )


def _check_args(
    *,
    mode: str,
    method: str,
    objective: str,
    device: str | None,
    base_out: Any,
    budget: Any,
    cost: Any,
    groups: Any,
    quotas: Any,
    k: Any,
    threads: Any,
    shard_timeout: Any,
    checkpoint_every: Any,
) -> None:
    """The checks that need no data: modes and options this selection runs, and the numbers."""
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
    if shard_timeout is not None and not (
        isinstance(shard_timeout, (int, float))
        and not isinstance(shard_timeout, bool)
        and shard_timeout > 0
    ):
        raise ValueError(
            f"shard_timeout must be a number of seconds > 0 or None, got {shard_timeout!r}"
        )
    if not (isinstance(checkpoint_every, (int, float)) and checkpoint_every >= 0):
        raise ValueError(
            f"checkpoint_every must be a number of seconds >= 0, got {checkpoint_every!r}"
        )


def _progress_callable(progress: Any) -> Any:
    """The callable the loop calls with (picks, k, evaluations, seconds), or None."""
    cb: Any = None
    if progress is True:
        from ..selection import _Bar

        cb = _Bar()
    elif progress:
        if not callable(progress):
            raise TypeError("progress must be True, False/None or a callable")
        user_cb = progress
        cb = lambda *a: progress_says_continue(user_cb, user_cb(*a))  # noqa: E731
    return cb


def _run_greedy(
    run: _Run,
    done: dict[str, list],
    steps: Any,
    kk: int,
    early_stop: float,
    cb: Any,
    t_start: float,
) -> tuple[str, list, list, float, float]:
    """Replay the checkpoint's picks, run the greedy to k, then gather each shard's top gains
    (for the bound) and counters and write the final checkpoint. Returns (stop reason, tops,
    stats, seconds before the first pick, seconds of the loop)."""
    actors = run.actors
    run.picks = {f: list(v) for f, v in done.items()}
    if done["indices"]:
        run.replay()
    t_loop = time.perf_counter()
    t_ready = t_loop - t_start  # actors started, rows mapped, norms computed, picks replayed
    try:
        stop = run.greedy(steps, kk, early_stop, cb, t_start)
    except BaseException:
        # Ctrl-C, a failed progress callable, a dead shard: the picks made are greedy
        # picks all the same, so they are kept (a shard failure has saved them already)
        run.save()
        raise
    t_loop = time.perf_counter() - t_loop
    tops = run.gather([x.top_gains.remote(len(run.picks["indices"])) for x in actors])
    stats = run.gather([x.stats.remote() for x in actors])
    run.save(complete=True)
    return stop, tops, stats, t_ready, t_loop


def _selection(
    p: dict[str, list],
    tops: list,
    stats: list,
    stop: str,
    n: int,
    kk: int,
    conflict_penalty: float,
    early_stop: float,
    params: dict,
    t_start: float,
) -> Selection:
    """The Selection of the picks: log det summed in pick order as the core sums it, and
    Minoux's bound from the shards' top remaining gains merged."""
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
    factor, note = guarantee(
        Constraints(),
        conflict_penalty=conflict_penalty,
        early_stop=early_stop,
        objective=params["objective"],
        method=params["method"],
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
        penalty=conflict_penalty * conflict,
        scores=np.asarray(p["scores"], dtype=np.float64),
        logdet=ld,
        stop_reason=stop,
        opt_upper_bound=ub,
        certified_ratio=ld / ub if ub > 0 else 1.0,
        evaluations=int(sum(e for e, _, _ in stats)),
        n=n,
        k=kk,
        params=params,
        elapsed_s=time.perf_counter() - t_start,
        dot_products=int(sum(dp for _, dp, _ in stats)),
        guarantee=factor,
        guarantee_note=note,
    )
