"""The coordinator of the exact and stochastic modes: the shards' row numbering, the picks so far,
the checkpoint writes, one call per shard gathered with a failing shard named, the replay of a
checkpoint's picks and the greedy loops."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShardFailedError
from .checkpoint import _PICK_FIELDS, _save_checkpoint

_PING_TIMEOUT_S = 30.0  # one deadline for all shards' answers when a failure is diagnosed


def _cause(ray: Any, err: BaseException) -> tuple[str, BaseException | None]:
    """What went wrong on a shard, whole: the original exception's type and message when Ray
    carries it (an error raised in the shard's code), else the last lines of Ray's report (an
    actor that died: its creation failed, the node has no spice, the process was killed)."""
    orig = getattr(err, "cause", None)
    if isinstance(orig, BaseException) and not isinstance(orig, ray.exceptions.RayError):
        return f"{type(orig).__name__}: {orig}", orig
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {' | '.join(lines[-4:])}", None


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

    def greedy(self, steps: Any, kk: int, early_stop: float, cb: Any, t_start: float) -> str:
        """The greedy from the current step to k, exact or stochastic as ``steps`` (an
        :class:`_ExactSteps` or :class:`_StochasticSteps`) asks the shards for candidates;
        returns the stop reason."""
        p = self.picks
        t = len(p["indices"])
        if t >= kk:
            return "budget"
        held: list[np.ndarray | None] = [None] * len(self.actors)  # each shard's candidate's row
        cands = steps.first(held, t)
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
            if early_stop > 0.0 and t >= 1 and delta <= early_stop * p["gains"][0]:
                return "early_stop"
            for f, v in zip(_PICK_FIELDS, (g, q, score, delta, base, align, conflict)):
                p[f].append(v)
            t += 1
            want = t < kk
            # one hop: the owner sent the row with its candidate, so no fetch from the owner
            cands = steps.next(held, held[o], q, o, int(local), t, want)
            now = time.monotonic()
            if self.ckpt is not None and now - self.last_save >= self.every:
                self.save()
            if cb is not None and (now - last_cb >= 0.2 or not want):
                last_cb = now
                if not cb(t, kk, 0, time.perf_counter() - t_start):
                    return "cancelled"
            if not want:
                return "budget"


class _ExactSteps:
    """The exact greedy's calls: each shard's best candidate, and per pick one step that applies
    it and brings back every shard's next candidate, with its row where it changed."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def first(self, held: list, t: int) -> list:
        run = self.run
        return run.take(run.gather([x.best_with_row.remote() for x in run.actors]), held)

    def next(self, held: list, row: Any, q: float, o: int, local: int, t: int, want: bool) -> list:
        run = self.run
        return run.take(
            run.gather(
                [
                    x.step.remote(row, q, local if s == o else -1, want)
                    for s, x in enumerate(run.actors)
                ]
            ),
            held,
        )


class _StochasticSteps:
    """Stochastic greedy over the shards: each step a uniform sample of the rows left, split
    between the shards by a multivariate hypergeometric draw (so the union is a uniform
    subset), each shard drawing its part with its own seed; both seeded by (seed, step)."""

    def __init__(self, run: _Run, n: int, kk: int, eps: float, seed: int) -> None:
        self.run = run
        self.seed = seed
        self.sample_size = max(1, math.ceil((n / max(1, kk)) * math.log(1.0 / eps)))
        self.counts: list = []  # rows each shard has left to sample from

    def first(self, held: list, t: int) -> list:
        run = self.run
        self.counts = run.gather([x.remaining.remote() for x in run.actors])
        return self.draw(held, t)

    def next(self, held: list, row: Any, q: float, o: int, local: int, t: int, want: bool) -> list:
        run = self.run
        self.counts = run.gather(
            [x.apply.remote(row, q, local if s == o else -1) for s, x in enumerate(run.actors)]
        )
        return self.draw(held, t) if want else []

    def draw(self, held: list, t: int) -> list:
        """The best candidate of each shard's part of step t's sample, with its row."""
        run, actors, counts = self.run, self.run.actors, self.counts
        r = int(sum(counts))
        rng = np.random.default_rng([self.seed, t])
        m = min(self.sample_size, r)
        split = rng.multivariate_hypergeometric(np.asarray(counts, dtype=np.int64), m)
        seeds = rng.integers(0, 2**63, size=len(actors))
        cands = run.take(
            run.gather(
                [x.sample.remote(int(split[s]), int(seeds[s])) for s, x in enumerate(actors)]
            ),
            held,
        )
        if all(c is None for c in cands) and m < r:  # the sample all dead: every row left
            cands = run.take(
                run.gather(
                    [x.sample.remote(int(counts[s]), int(seeds[s])) for s, x in enumerate(actors)]
                ),
                held,
            )
        return cands
