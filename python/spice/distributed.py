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
shards (ties to the lowest row), whose row came with it, and sends it to every shard, which applies
the pick from the row itself and answers with its next candidate: one round trip a pick;
docs/algorithm.md §12 explains why that reproduces one machine bit for bit and what each pick
sends.

The shards are placed by a Ray placement group, one bundle per shard of CPUs that fit on one
node, one shard per node where there are enough nodes (STRICT_SPREAD, else SPREAD); store paths
are made absolute on the driver and checked on each node before any pick.

A shard that dies, fails or does not answer within ``shard_timeout`` stops the run with
:class:`ShardFailedError`, which names it and carries the cause. With ``checkpoint="picks.json"``
the picks made so far are kept there (written atomically every ``checkpoint_every`` seconds, at
the end, on a failure and on an interrupt; never with fewer picks than it holds), and the same call
run again replays them into fresh shards and continues: the result is the one an uninterrupted run
gives.
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
_START_TIMEOUT_S = 600.0  # placement and start-up of the shards
_PING_TIMEOUT_S = 30.0  # one deadline for all shards' answers when a failure is diagnosed
_PICK_FIELDS = ("indices", "q", "scores", "gains", "base", "align", "conflict")


class ShardFailedError(RuntimeError):
    """A shard's Ray actor died, failed, or did not answer in time during a distributed selection.

    Attributes: ``shard`` (its number), ``rows`` (its global ``(first, last + 1)``),
    ``picks_done`` (picks made before the failure), ``checkpoint`` (the file holding them, or
    None) and ``cause`` (the exception raised on the shard, e.g. a StoreError, when there was
    one; the message also carries it, or the last lines of Ray's report).
    """

    def __init__(
        self,
        message: str,
        *,
        shard: int,
        rows: tuple,
        picks_done: int,
        checkpoint: Any,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.shard = shard
        self.rows = rows
        self.picks_done = picks_done
        self.checkpoint = checkpoint
        self.cause = cause


def _cause(ray: Any, err: BaseException) -> tuple[str, BaseException | None]:
    """What went wrong on a shard, whole: the original exception's type and message when Ray
    carries it (an error raised in the shard's code), else the last lines of Ray's report (an
    actor that died: its creation failed, the node has no spice, the process was killed)."""
    orig = getattr(err, "cause", None)
    if isinstance(orig, BaseException) and not isinstance(orig, ray.exceptions.RayError):
        return f"{type(orig).__name__}: {orig}", orig
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {' | '.join(lines[-4:])}", None


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


def _abs(p: str | os.PathLike[str]) -> str:
    """A path as every node must read it: absolute, resolved on the driver (a worker's working
    directory is not the driver's on a ``ray start`` cluster)."""
    return str(Path(os.fspath(p)).expanduser().resolve())


def _part_rows(store: Any) -> np.ndarray | None:
    """The global row of each of a part store's rows (chunks c with c mod N = i, in chunk
    order), from its manifest; None for a whole store or another format."""
    m = getattr(store, "manifest", None)
    if not isinstance(m, dict) or int((m.get("part") or [0, 1])[1]) <= 1:
        return None
    step = int(m["shard_rows"])
    rows = np.empty(int(store.features.shape[0]), dtype=np.int64)
    for ch in m["chunks"]:
        a, r = int(ch["offset"]), int(ch["rows"])
        rows[a : a + r] = int(ch["chunk"]) * step + np.arange(r, dtype=np.int64)
    return rows


def _plan(source: Any, shards: int | None, bf16: bool) -> tuple[list, int, int, int, str]:
    """(per-shard specs, n, d, dtype code, description). A spec is (source spec, lo, hi, rows):
    the shard reads local rows [lo, hi) of its source, and ``rows`` numbers them globally: an
    int offset (contiguous rows) or an int64 array (a part store's rows, ascending)."""
    if isinstance(source, (str, os.PathLike)):
        from . import stores

        path = _abs(source)
        feats = stores.open(path).features
        arr, code = as_features(feats, bf16=bf16)
        n, d = arr.shape
        s = _check_shards(shards, n)
        cuts = [n * i // s for i in range(s + 1)]
        specs = [(("store", path), cuts[i], cuts[i + 1], 0) for i in range(s)]
        return specs, n, d, code, f"store {path}"
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
        numbered = []
        for p in source:
            path = _abs(p)
            st = stores.open(path)
            arr, code = as_features(st.features, bf16=bf16)
            if d0 is None:
                d0, code0 = arr.shape[1], code
            elif arr.shape[1] != d0 or code != code0:
                raise ValueError(
                    f"store part {path} has {arr.shape[1]} columns of dtype code {code}; "
                    f"the first part has {d0} of code {code0}"
                )
            rows = _part_rows(st)
            numbered.append(rows is not None)
            # a part's rows are read whole by its shard: local rows [0, len)
            specs.append((("store", path), 0, arr.shape[0], rows if rows is not None else n))
            n += arr.shape[0]
        if any(numbered):
            if not all(numbered):
                raise ValueError(
                    "the list mixes part stores (written with --shard i/N, numbered by their "
                    "chunks) and whole stores (numbered in list order): pass one kind"
                )
            _check_parts_cover(specs, n, source)
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


def _check_parts_cover(specs: list, n: int, source: Sequence) -> None:
    """Part stores must hold rows 0..n-1 once each, each part in ascending order (the greedy's
    tie rule, lowest row first, needs a shard's local order to be the global one)."""
    seen = np.zeros(n, dtype=np.int64)
    for (_, _, _, rows), p in zip(specs, source):
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise ValueError(
                f"store part {os.fspath(p)} holds row {int(rows.max())}, but the {len(specs)} "
                f"parts hold {n} rows: a part is missing (pass all N parts of the extraction)"
            )
        if np.any(np.diff(rows) <= 0):
            raise ValueError(f"store part {os.fspath(p)} does not hold its rows in ascending order")
        np.add.at(seen, rows, 1)
    if np.any(seen != 1):
        g = int(np.flatnonzero(seen != 1)[0])
        raise ValueError(
            f"the store parts hold row {g} {int(seen[g])} times: a part is given twice or "
            "parts of different extractions are mixed"
        )


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
        self, spec: tuple, lo: int, hi: int, bf16: bool, options: dict, fail_at: Any
    ) -> None:
        # nothing that can fail here: an error in open() reaches the driver as itself (type,
        # message, traceback), where one in the constructor only kills the actor
        self.args = (spec, lo, hi, bf16, options)
        self.fail_at = fail_at  # tests: (pick, "exit" or "stop") to crash or stall at that pick
        self.sent = -1  # local row of the candidate whose row the coordinator holds
        self.rows_sent = 0  # rows sent with candidates (bytes per pick, in params)

    def open(self) -> dict:
        """Map this shard's rows, check what this node must have, build the engine."""
        import socket

        spec, lo, hi, bf16, options = self.args
        host = socket.gethostname()
        spill = options.get("spill_dir") or ""
        if spill and not os.path.isdir(spill):
            raise FileNotFoundError(f"spill_dir {spill} is not a directory on node {host}")
        # the w rows' file is created (and unlinked) there: say so now, not after the mapping
        if spill and not os.access(spill, os.W_OK | os.X_OK):
            raise PermissionError(f"spill_dir {spill} is not writable on node {host}")
        if spec[0] == "store" and not os.path.exists(spec[1]):
            raise FileNotFoundError(
                f"store {spec[1]} does not exist on node {host} (is it mounted there?)"
            )
        self.arr, self.code = _open_rows(spec, lo, hi, bf16)
        try:
            self.eng = _core.Stepper(self.arr, self.code, _core.Options(**options))
        except RuntimeError as e:
            if not str(e).startswith("spill_dir"):
                raise
            # the core names the bytes and directory; the node and what they are for are ours
            raise RuntimeError(
                f"{e} (on node {host}: the w rows of k = {options['k']} picks, k x d x 8 bytes, "
                "which every shard keeps)"
            ) from e
        return self.info()

    def info(self) -> dict:
        import socket

        try:
            import ray  # type: ignore[import-not-found]

            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        except Exception:  # noqa: BLE001 (outside Ray: in-process use)
            node = ""
        return dict(
            rows=int(self.arr.shape[0]),
            d=int(self.arr.shape[1]),
            code=int(self.code),
            isa=_core.kernel_isa(),
            bad_row=int(self.eng.bad_row),
            host=socket.gethostname(),
            node=node,
            pid=os.getpid(),
        )

    def _maybe_fail(self) -> None:
        if self.fail_at is not None and self.eng.picks == self.fail_at[0]:
            if self.fail_at[1] == "stop":
                import signal

                os.kill(os.getpid(), signal.SIGSTOP)  # a test's stalled node: alive, silent
            else:
                os._exit(1)  # a test's simulated crash: the process dies without a word

    def ping(self) -> bool:
        return True

    def _with_row(self, cand: Any) -> tuple[Any, np.ndarray | None]:
        """A candidate and its row, so that the coordinator holds the winner's row when it
        broadcasts the pick (one hop, not a fetch from the owner and then a send). The row is
        left out when it is the one this shard sent last: the coordinator still holds it."""
        if cand is None:
            return None, None
        j = int(cand[0])
        if j == self.sent:
            return cand, None
        self.sent = j
        self.rows_sent += 1
        return cand, np.array(self.arr[j])

    def best(self) -> Any:
        return self.eng.best()

    def best_with_row(self) -> tuple[Any, np.ndarray | None]:
        self.sent = -1  # a fresh loop: the coordinator holds no row of ours
        return self._with_row(self.eng.best())

    def row(self, local: int) -> np.ndarray:
        return np.array(self.arr[local])

    def rows(self, locals_: Sequence[int]) -> np.ndarray:
        return np.ascontiguousarray(self.arr[np.asarray(locals_, dtype=np.int64)])

    def sample(self, m: int, seed: int) -> tuple[Any, np.ndarray | None]:
        """The best of this shard's part of a stochastic step's sample, with its row."""
        return self._with_row(self.eng.best_of_sample(int(m), int(seed)))

    def remaining(self) -> int:
        return int(self.eng.remaining())

    def apply(self, row: np.ndarray, q: float, local: int) -> int:
        """A stochastic step's pick: applied, then the rows left to sample from."""
        self._maybe_fail()
        self.eng.apply_pick(row, q, local)
        return int(self.eng.remaining())

    def step(
        self, row: np.ndarray, q: float, local: int, want_best: bool
    ) -> tuple[Any, np.ndarray | None]:
        """Apply a pick, then this shard's next best candidate with its row (see _with_row)."""
        self._maybe_fail()
        self.eng.apply_pick(row, q, local)
        return self._with_row(self.eng.best()) if want_best else (None, None)

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

    def stats(self) -> tuple[int, int, int]:
        return int(self.eng.evaluations), int(self.eng.dot_products), self.rows_sent


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
    """Write the checkpoint atomically: a temporary file beside it, fsync'd, renamed over it,
    and the directory fsync'd, so a crash or power loss leaves the old file or the new one."""
    doc = dict(format=CHECKPOINT_FORMAT, version=1, run=key, complete=complete, picks=picks)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc))  # floats as repr: exact round trip
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a directory that cannot be opened (some platforms): the rename stands
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
    spill_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    budget: float | None = None,
    cost: Any = None,
    groups: Any = None,
    quotas: Any = None,
    shard_timeout: float | None = 600.0,
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
    ckpt = Path(_abs(checkpoint)) if checkpoint is not None else None
    kept: dict[str, list] = {f: [] for f in _PICK_FIELDS}
    if ckpt is not None and ckpt.exists():
        kept = _load_checkpoint(ckpt, key)
    # a smaller k replays a prefix; the file keeps all its picks (see _Run.save)
    done = {f: v[:kk] for f, v in kept.items()}

    ray, how = _connect(address)
    s_count = len(specs)
    cpus, nthreads, strategy = _fit_cpus(_node_cpus(ray), s_count, threads)
    options = dict(k=kk, alpha=a, lam=lam, omega=omega, threads=nthreads)
    from ray.util.placement_group import (  # type: ignore[import-not-found]
        placement_group,
        remove_placement_group,
    )
    from ray.util.scheduling_strategies import (  # type: ignore[import-not-found]
        PlacementGroupSchedulingStrategy,
    )

    # one bundle per shard, on distinct nodes where there are enough: a node's memory bandwidth
    # and page cache serve one shard, and one lost node loses one shard
    pg = placement_group([{"CPU": cpus}] * s_count, strategy=strategy)
    remote_cls = ray.remote(max_restarts=0, max_task_retries=0)(_Shard)
    actors: list = []
    run = _Run(ray, actors, specs, ckpt, key, checkpoint_every, shard_timeout)
    run.kept = kept
    run.resumable = mode == "exact"
    try:
        if not pg.wait(timeout_seconds=_START_TIMEOUT_S):
            raise RuntimeError(
                f"Ray could not place {s_count} shards of {cpus:g} CPU(s) each ({strategy}) "
                f"within {_START_TIMEOUT_S:g} s on nodes with {_node_cpus(ray)} CPUs: other "
                "jobs hold them? (threads=... asks for fewer)"
            )
        for s, (spec, lo, hi, _) in enumerate(specs):
            fail = None
            if _fail_at is not None and _fail_at[0] == s:
                fail = (_fail_at[1], _fail_at[2] if len(_fail_at) > 2 else "exit")
            where = PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=s
            )
            actors.append(
                remote_cls.options(num_cpus=cpus, scheduling_strategy=where).remote(
                    spec, lo, hi, bf16, dict(options, spill_dir=spills[s]), fail
                )
            )
        infos = run.gather(
            [x.open.remote() for x in actors], timeout=_START_TIMEOUT_S, starting=True
        )
        run.hosts = {s: i["host"] for s, i in enumerate(infos)}
        isas = {i["isa"] for i in infos}
        if len(isas) > 1:
            raise RuntimeError(
                "the shards run different kernel families "
                f"({', '.join(sorted(isas))}): their dot products would round differently; set "
                "SPICE_KERNELS to the same family (generic, avx2, avx512) on every node"
            )
        bad = [(run.glob(s, i["bad_row"]), s) for s, i in enumerate(infos) if i["bad_row"] >= 0]
        if bad:
            g, s = min(bad)
            row = run.gather([actors[s].row.remote(run.owner(g)[1])], [s])[0]
            raise ValueError(describe_bad_row(row[None, :], code, 0, a, row_name=g))
        run.picks = {f: list(v) for f, v in done.items()}
        if done["indices"]:
            run.replay()
        t_loop = time.perf_counter()
        t_ready = t_loop - t_start  # actors started, rows mapped, norms computed, picks replayed
        try:
            if mode == "exact":
                stop = run.exact(kk, omega, cb, t_start)
            else:
                stop = run.stochastic(kk, omega, cb, t_start, n, seps, seed64)
        except BaseException:
            # Ctrl-C, a failed progress callable, a dead shard: the picks made are greedy
            # picks all the same, so they are kept (a shard failure has saved them already)
            run.save()
            raise
        t_loop = time.perf_counter() - t_loop
        tops = run.gather([x.top_gains.remote(len(run.picks["indices"])) for x in actors])
        stats = run.gather([x.stats.remote() for x in actors])
        run.save(complete=True)
    finally:
        for x in actors:
            try:
                ray.kill(x)
            except Exception:  # noqa: BLE001 (already gone)
                pass
        try:
            remove_placement_group(pg)
        except Exception:  # noqa: BLE001 (the cluster is gone: nothing to free)
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
        evaluations=int(sum(e for e, _, _ in stats)),
        n=n,
        k=kk,
        params=params,
        elapsed_s=time.perf_counter() - t_start,
        dot_products=int(sum(dp for _, dp, _ in stats)),
        guarantee=factor,
        guarantee_note=note,
    )


class _Run:
    """The coordinator's state: the actors, how their rows are numbered and the picks so far."""

    def __init__(
        self,
        ray: Any,
        actors: list,
        specs: list,
        ckpt: Path | None,
        key: dict,
        every: float,
        timeout: float | None,
    ) -> None:
        self.ray = ray
        self.actors = actors
        # global numbering: contiguous shards keep an offset, part stores an array of rows
        self.offsets: list[int | None] = []
        self.maps: list[np.ndarray | None] = []
        self.ranges: list[tuple[int, int]] = []  # (first, last + 1) global row, for messages
        for _, lo, hi, rows in specs:
            if isinstance(rows, np.ndarray):
                self.offsets.append(None)
                self.maps.append(rows)
                self.ranges.append((int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0))
            else:
                self.offsets.append(int(rows) + lo)
                self.maps.append(None)
                self.ranges.append((int(rows) + lo, int(rows) + hi))
        self.ckpt = ckpt
        self.key = key
        self.every = every
        self.timeout = timeout  # seconds a shard may take over one call; None: no limit
        self.picks: dict[str, list] = {f: [] for f in _PICK_FIELDS}
        self.kept: dict[str, list] = {f: [] for f in _PICK_FIELDS}  # the checkpoint as loaded
        self.hosts: dict[int, str] = {}  # shard -> its node's host name, once it has started
        self.last_save = time.monotonic()
        self.resumable = True  # exact mode: a checkpoint's picks can be replayed

    def glob(self, s: int, local: int) -> int:
        """The global row of shard s's local row."""
        off = self.offsets[s]
        return off + local if off is not None else int(self.maps[s][local])  # type: ignore[index]

    def owner(self, g: int) -> tuple[int, int]:
        """(shard, local row) of global row g."""
        for s in range(len(self.actors)):
            off, rows = self.offsets[s], self.maps[s]
            if off is not None:
                lo, hi = self.ranges[s]
                if lo <= g < hi:
                    return s, g - off
            else:
                j = int(np.searchsorted(rows, g))  # type: ignore[arg-type]
                if j < rows.size and rows[j] == g:  # type: ignore[union-attr]
                    return s, j
        raise ValueError(f"row {g} is in no shard")

    def save(self, complete: bool = False) -> None:
        """Write the picks, unless the checkpoint holds more: a rerun with a smaller k (or one
        that fails before catching up) must not throw away a longer run's picks, of which its
        own are a prefix."""
        if self.ckpt is None:
            return
        # an interrupt can land between the appends of one pick's fields: whole picks only
        m = min(len(v) for v in self.picks.values())
        if m < len(self.kept["indices"]) or (m == 0 and not complete):
            return
        picks = {f: v[:m] for f, v in self.picks.items()}
        _save_checkpoint(self.ckpt, self.key, picks, complete)
        self.kept = picks
        self.last_save = time.monotonic()

    def unresponsive(self, deadline: float) -> list[int]:
        """The shards that do not answer a ping: all pinged at once, one deadline for all."""
        ray = self.ray
        refs = [x.ping.remote() for x in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=deadline)
        answered = {r.hex() for r in ready}
        out = []
        for s, r in enumerate(refs):
            if r.hex() not in answered:
                out.append(s)
                continue
            try:
                ray.get(r, timeout=0)
            except ray.exceptions.RayError:
                out.append(s)
        return out

    def gather(
        self,
        refs: list,
        shards: Sequence[int] | None = None,
        timeout: float | None = None,
        starting: bool = False,
    ) -> list:
        """ray.get of one call per shard (``shards[i]`` made ``refs[i]``, default all in order),
        with a dead, failing or silent shard turned into ShardFailedError naming it."""
        ray = self.ray
        who = list(range(len(self.actors))) if shards is None else list(shards)
        limit = self.timeout if timeout is None else timeout
        try:
            return ray.get(refs, timeout=limit)
        except ray.exceptions.GetTimeoutError:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            done = {r.hex() for r in ready}
            slow = [who[i] for i, r in enumerate(refs) if r.hex() not in done]
            self.fail(
                slow, None, f"did not answer within {limit:g} s (stalled or unreachable)", starting
            )
        except ray.exceptions.RayError as e:
            err: BaseException = e
            culprit = []
            for i, r in enumerate(refs):  # the call that failed, for its own error
                if ray.wait([r], timeout=0)[0]:
                    try:
                        ray.get(r, timeout=0)
                    except ray.exceptions.RayError as e2:
                        culprit, err = [who[i]], e2
                        break
            dead = []
            if not culprit or isinstance(err, ray.exceptions.RayActorError):
                # a process died: which others did (a lost node takes several); an exception
                # raised by a living shard needs no ping, which would queue behind its calls
                dead = self.unresponsive(min(_PING_TIMEOUT_S, limit or _PING_TIMEOUT_S))
            bad = culprit + [s for s in dead if s not in culprit]
            if not bad:
                raise
            self.fail(bad, err, "failed" if starting else "died", starting)
        raise AssertionError("unreachable")

    def fail(self, bad: list[int], err: BaseException | None, why: str, starting: bool) -> None:
        """Keep the picks (never fewer than the checkpoint holds) and raise ShardFailedError."""
        t = len(self.picks["indices"])
        m = len(self.kept["indices"])
        if starting:
            what = f"{why} while starting, before any pick"
            if self.ckpt is not None:
                where = (
                    f"the checkpoint {self.ckpt} is unchanged ({m} picks); fix the cause and run "
                    "the same call again"
                )
            else:
                where = "fix the cause and run the same call again"
        else:
            what = f"{why} after {t} picks"
            if self.ckpt is not None:
                self.save()
                where = (
                    f"the {max(t, m)} picks made so far are in {self.ckpt}; run the same call "
                    "again to resume from them"
                )
            elif self.resumable:
                where = "pass checkpoint=<file> to keep the picks of a run that fails"
            else:
                where = "a stochastic run cannot resume; run it again"
        cause, orig = _cause(self.ray, err) if err is not None else ("no answer", None)
        s = bad[0]
        lo, hi = self.ranges[s]
        on = f" on node {self.hosts[s]}" if s in self.hosts else ""
        others = f" (and shard(s) {', '.join(map(str, bad[1:]))})" if len(bad) > 1 else ""
        exc = ShardFailedError(
            f"shard {s} of {len(self.actors)} (rows {lo}..{hi - 1}){on}{others} {what}: "
            f"{cause}; {where}",
            shard=s,
            rows=(lo, hi),
            picks_done=t,
            checkpoint=self.ckpt,
            cause=orig,
        )
        raise exc from (orig if orig is not None else err)

    def replay(self) -> None:
        """Apply the recorded picks in fresh shards (no selection), checking they are theirs."""
        ray = self.ray
        idx = [int(g) for g in self.picks["indices"]]
        m = len(idx)
        where = [self.owner(g) for g in idx]
        owners = [o for o, _ in where]
        rows: np.ndarray | None = None
        for s, x in enumerate(self.actors):
            mine = [t for t in range(m) if owners[t] == s]
            if not mine:
                continue
            got = self.gather([x.rows.remote([where[t][1] for t in mine])], [s])[0]
            if rows is None:
                rows = np.empty((m, got.shape[1]), dtype=got.dtype)
            rows[mine] = got
        ref = ray.put(rows)
        qs = [float(v) for v in self.picks["q"]]
        bases = self.gather(
            [
                x.replay.remote(ref, qs, [where[t][1] if owners[t] == s else -1 for t in range(m)])
                for s, x in enumerate(self.actors)
            ]
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

    @staticmethod
    def take(replies: list, held: list) -> list:
        """The candidates of one call per shard; the rows that came with them replace the held
        ones (a shard sends none when its candidate's row is the one it sent last)."""
        for s, (_, row) in enumerate(replies):
            if row is not None:
                held[s] = row
        return [c for c, _ in replies]

    def exact(self, kk: int, omega: float, cb: Any, t_start: float) -> str:
        """The greedy from the current step to k; returns the stop reason."""
        actors, p = self.actors, self.picks
        t = len(p["indices"])
        if t >= kk:
            return "budget"
        held: list[np.ndarray | None] = [None] * len(actors)  # each shard's candidate's row
        cands = self.take(self.gather([x.best_with_row.remote() for x in actors]), held)
        last_cb = time.monotonic()
        while True:
            best = None  # (score, global index, shard, candidate)
            for s, c in enumerate(cands):
                if c is None:
                    continue
                g = self.glob(s, int(c[0]))
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
            # one hop: the owner sent the row with its candidate; the step that applies the
            # pick brings back every shard's next candidate, with its row where it changed
            row = held[o]
            cands = self.take(
                self.gather(
                    [
                        x.step.remote(row, q, int(local) if s == o else -1, want)
                        for s, x in enumerate(actors)
                    ]
                ),
                held,
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
        actors, p = self.actors, self.picks
        sample = max(1, math.ceil((n / max(1, kk)) * math.log(1.0 / eps)))
        counts = self.gather([x.remaining.remote() for x in actors])
        held: list[np.ndarray | None] = [None] * len(actors)
        last_cb = time.monotonic()
        t = len(p["indices"])
        while t < kk:
            r = int(sum(counts))
            rng = np.random.default_rng([seed, t])
            m = min(sample, r)
            split = rng.multivariate_hypergeometric(np.asarray(counts, dtype=np.int64), m)
            seeds = rng.integers(0, 2**63, size=len(actors))
            cands = self.take(
                self.gather(
                    [x.sample.remote(int(split[s]), int(seeds[s])) for s, x in enumerate(actors)]
                ),
                held,
            )
            if all(c is None for c in cands) and m < r:  # the sample all dead: every row left
                cands = self.take(
                    self.gather(
                        [
                            x.sample.remote(int(counts[s]), int(seeds[s]))
                            for s, x in enumerate(actors)
                        ]
                    ),
                    held,
                )
            best = None
            for s, c in enumerate(cands):
                if c is not None:
                    g = self.glob(s, int(c[0]))
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
            row = held[o]  # sent with the sample's candidate: no fetch from the owner
            counts = self.gather(
                [x.apply.remote(row, q, int(local) if s == o else -1) for s, x in enumerate(actors)]
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


def _answers(address: str, timeout: float = 2.0) -> bool:
    """Whether something listens at host:port (a GCS left by a dead cluster does not)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _connect(address: str | None) -> tuple[Any, str]:
    """Ray, initialised as ``address`` says, and a sentence saying which instance is used.

    None: the cluster ``RAY_ADDRESS`` names, else the one ``ray start`` recorded on this machine
    if it answers, else a private local instance (a stale record of a dead cluster is ignored,
    where Ray itself would spend 30 s failing to reach it)."""
    ray = _import_ray()
    if ray.is_initialized():
        try:
            cur = ray.get_runtime_context().gcs_address
        except Exception:  # noqa: BLE001 (a client connection has no GCS address here)
            cur = None
        if address not in (None, "auto") and cur is not None:
            want = address.split("://", 1)[-1]
            if want != cur:
                raise ValueError(
                    f"address={address!r}, but this process is already connected to the Ray "
                    f"instance at {cur}: call ray.shutdown() first, or pass address=None to "
                    "use the instance already connected"
                )
        return ray, f"the Ray instance this process was already connected to ({cur})"
    kw = dict(include_dashboard=False, logging_level="WARNING")
    if address is None and not os.environ.get("RAY_ADDRESS"):
        from ray._common.utils import get_ray_address_file  # type: ignore[import-not-found]

        f = Path(get_ray_address_file(None))
        rec = f.read_text(encoding="utf-8").strip() if f.is_file() else ""
        if rec and _answers(rec):
            ray.init(address=rec, **kw)
            return ray, f"joined the running cluster at {rec} (recorded in {f})"
        ray.init(address="local", **kw)
        stale = f" ({f} names {rec}, which does not answer: ignored)" if rec else ""
        return ray, f"started a private local Ray instance{stale}"
    ray.init(address=address or os.environ["RAY_ADDRESS"], **kw)
    return ray, f"joined the cluster at {address or os.environ['RAY_ADDRESS']}"


def _node_cpus(ray: Any) -> list[float]:
    """The CPUs of each live node, largest first."""
    cpus = [float(nd["Resources"].get("CPU", 0.0)) for nd in ray.nodes() if nd.get("Alive")]
    return sorted((c for c in cpus if c > 0), reverse=True)


def _fit_cpus(nodes: list[float], s_count: int, threads: int | None) -> tuple[float, int, str]:
    """(CPUs each shard asks for, its threads, placement strategy): a request that fits on one
    node, with room for all shards on the nodes; STRICT_SPREAD (one shard per node) when there
    are enough nodes of that size, else SPREAD."""
    total = sum(nodes)

    def room(c: float) -> int:  # shards of c CPUs the nodes hold
        return sum(math.floor(x / c + 1e-9) for x in nodes)

    if not nodes:
        raise ValueError("the Ray cluster has no live node with CPUs")
    if threads is not None:
        c, nthreads = float(threads), int(threads)
        if c * s_count > total:
            raise ValueError(
                f"{s_count} shards of threads={threads} need {c * s_count:g} CPUs but the Ray "
                f"cluster has {total:g}: lower threads (or leave it None to divide the CPUs)"
            )
        if room(c) < s_count:
            raise ValueError(
                f"{s_count} shards of threads={threads} do not fit on the nodes (CPUs per node: "
                f"{', '.join(f'{x:g}' for x in nodes)}): a shard runs on one node; lower threads"
            )
    elif len(nodes) >= s_count and nodes[s_count - 1] >= 1:
        # one shard per node: as many whole CPUs as the smallest of the S largest nodes has
        c = float(math.floor(nodes[s_count - 1] + 1e-9))
        nthreads = int(c)
    else:
        c = 0.0
        for whole in range(int(min(nodes[0], total // s_count)), 0, -1):
            if room(whole) >= s_count:
                c = float(whole)
                break
        if c == 0.0:  # fewer CPUs than shards: shards share CPUs, in equal fractions of a node
            for x in nodes:
                for m in range(1, s_count + 1):
                    f = math.floor(x / m * 1e4) / 1e4  # Ray counts CPUs in 1/10^4
                    if f > 0 and room(f) >= s_count:
                        c = max(c, f)
                        break
        nthreads = max(1, int(c))
    big_enough = sum(1 for x in nodes if x + 1e-9 >= c)
    return c, nthreads, "STRICT_SPREAD" if big_enough >= s_count else "SPREAD"


def _spill_dirs(spill_dir: Any, s_count: int, mode: str) -> list[str]:
    """One spill directory per shard ("" for none), absolute as the driver resolves them."""
    if spill_dir is None:
        return [""] * s_count
    if isinstance(spill_dir, (str, os.PathLike)):
        return [_abs(spill_dir)] * s_count  # the same path on each node (node-local scratch)
    if not isinstance(spill_dir, (list, tuple)):
        raise TypeError(
            f"spill_dir must be a path, a list of one path per shard, or None; got "
            f"{type(spill_dir).__name__}"
        )
    if mode == "partition":
        raise ValueError(
            "mode='partition' takes one spill_dir path (its parts are Ray tasks placed anywhere, "
            "and the merge runs on the driver), not a list"
        )
    if len(spill_dir) != s_count:
        raise ValueError(
            f"spill_dir lists {len(spill_dir)} paths for {s_count} shards: give one per shard"
        )
    out = []
    for s, p in enumerate(spill_dir):
        if not isinstance(p, (str, os.PathLike)) or not os.fspath(p):
            raise TypeError(f"spill_dir[{s}] must be a non-empty path, got {p!r}")
        out.append(_abs(p))
    return out


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
    # each row to a part independently and uniformly at random, as the guarantee's proof
    # assumes (equal-size parts would make the rows' parts dependent); an empty part is dropped
    rng = np.random.default_rng(int(kw["seed"]) & 0xFFFFFFFFFFFFFFFF)
    assign = rng.integers(0, s_count, size=n)
    parts = [p for p in (np.flatnonzero(assign == s) for s in range(s_count)) if p.size]
    s_count = len(parts)
    if isinstance(source, (str, os.PathLike)):
        part_specs = [("store", _abs(source))] * s_count
    else:
        arr, _ = as_features(source, bf16=kw["bf16"])
        part_specs = [("array", np.ascontiguousarray(arr[p])) for p in parts]
    ray, _ = _connect(address)
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
            "the random partition, for any k (monotone submodular: lambda = 0, no early stop)"
        )
    params = dict(
        won.params, backend="ray", mode="partition", shards=len(specs), source=what, winner=src
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
