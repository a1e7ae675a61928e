"""Rank coordination: which part of the rows this process writes (torch.distributed, torchrun
or ``shard=(i, N)``), steps the ranks take together, and the multi-rank extraction into one
store."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..store import (
    FeatureStore,
    SharedStoreWriter,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
)
from ..store import config_mismatch_message as _mismatch
from .chunks import _run_chunks, _say
from .config import ExtractConfig
from .records import Record, RecordError

log = logging.getLogger("spice.features")


def _resolve_shard(shard: tuple[int, int] | str) -> tuple[int, int]:
    if shard == "auto":
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    i, n = shard  # type: ignore[misc]
    return int(i), int(n)


# Ranks wait for each other only at the start and the end; the end may come hours apart (a resumed
# rank with most of its rows left), so the coordination group's timeout is long. A rank that dies
# closes its connections and the others stop at once.
_SYNC_TIMEOUT = timedelta(days=7)
# a failure on one rank is raised on the others as the same class when it is one of these
_SHARED_ERRORS = (
    StoreError, StoreMismatchError, StoreIncompleteError, RecordError, ValueError, TypeError,
)  # fmt: skip


class _Ranks:
    """This process's place among the ranks of a shared extraction, and the steps they take
    together: each step's failure on any rank is raised on every rank, so none waits forever."""

    def __init__(self, rank: int, world: int, group: Any = None, owns_default: bool = False):
        self.rank, self.world = rank, world
        self.group = group
        self.owns_default = owns_default

    @staticmethod
    def solo(what: str, fn: Any) -> list[Any]:
        return [fn()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        try:
            torch.distributed.all_gather_object(out, obj, group=self.group)
        except RuntimeError as e:
            raise StoreIncompleteError(
                f"rank {self.rank} of {self.world}: another rank stopped ({str(e).strip()}). "
                "Run the same command again to resume: finished chunks and saved rows are kept"
            ) from e
        return out

    def step(self, what: str, fn: Any) -> list[Any]:
        """Run ``fn`` here, then wait for every rank; the results of all ranks, or the first
        failure (this rank's own exception where it failed here)."""
        try:
            res, err = fn(), None
        except Exception as e:  # noqa: BLE001 (re-raised below, on every rank)
            res, err = None, e
        got = self.gather((None, res) if err is None else (f"{type(err).__name__}: {err}", None))
        if err is not None:
            raise err
        for r, (msg, _) in enumerate(got):
            if msg is not None:
                name = msg.split(":", 1)[0]
                cls = {c.__name__: c for c in _SHARED_ERRORS}.get(name, StoreError)
                raise cls(f"rank {r} of {self.world} failed to {what}: {msg}")
        return [res for _, res in got]

    def close(self) -> None:
        dist = torch.distributed
        if self.world == 1 or not dist.is_initialized():
            return
        if self.owns_default:
            dist.destroy_process_group()
        elif self.group is not None:
            dist.destroy_process_group(self.group)


def _join_ranks(shard: tuple[int, int] | str) -> _Ranks | None:
    """The ranks to share one store with, or None for a process on its own (or one part of
    ``shard=(i, N)`` without a process group). Under torchrun without a process group, "auto"
    starts one (gloo) and ends it on return."""
    dist = torch.distributed
    if not dist.is_available():
        return None
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if shard != "auto":
            i, n = _resolve_shard(shard)
            if n != world:
                return None  # a part of another split than the group's: written on its own
            if i != rank:
                raise ValueError(f"shard={shard!r} in rank {rank} of {world}: pass shard='auto'")
        if world == 1:
            return None
        # a gloo group of our own: works whatever the default backend is, with a long timeout
        return _Ranks(rank, world, dist.new_group(backend="gloo", timeout=_SYNC_TIMEOUT))
    if shard != "auto" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    dist.init_process_group("gloo", timeout=_SYNC_TIMEOUT)  # torchrun's env:// settings
    return _Ranks(dist.get_rank(), dist.get_world_size(), owns_default=True)


def _layout(path: Path) -> str | None:
    """The ``layout`` of the unfinished store at ``path`` (None: none there, or finished)."""
    try:
        m = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m.get("layout") if isinstance(m, dict) and m.get("status") != "complete" else None


def json_norm(obj: Any) -> Any:
    """Round-trip through JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(obj))


def _extract_shared(
    ranks: _Ranks,
    run: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    out_root: Path,
    config: dict,
    extra: dict,
    projector: Any,
    modules: Sequence[tuple[str, nn.Module]],
    cfg: ExtractConfig,
    *,
    resume: bool,
    progress: bool,
    **run_kw: Any,
) -> FeatureStore:
    """Every rank writes its chunks (c % world == rank) into one store that rank 0 prepared and
    finishes: the same batches, and so the same bytes, as one process."""
    rank, world = ranks.rank, ranks.world
    n = len(records)
    writer = SharedStoreWriter(
        out_root, config, total_rows=n, dim=projector.dim, dtype=cfg.dtype,
        shard_rows=cfg.chunk_rows, rank=rank, world=world, extra=extra, resume=resume,
    )  # fmt: skip
    n_chunks = len(writer.all_chunks)

    def check_world() -> None:
        if world > n:
            raise ValueError(
                f"{world} ranks for {n} record(s): every rank needs at least one chunk of rows; "
                f"run with at most {n_chunks} ranks"
            )
        if world > n_chunks:
            raise ValueError(
                f"{world} ranks but {n} records make only {n_chunks} chunk(s) of chunk_rows="
                f"{cfg.chunk_rows} rows (--chunk-rows), a rank's unit of work: run with at most "
                f"{n_chunks} ranks, or chunk_rows <= {-(-n // world)}"
            )

    ranks.step("share the records", check_world)
    # every rank must compute the same rows the same way, or the store would mix two extractions
    mine = {
        "config": config,
        "dim": projector.dim,
        "dtype": cfg.dtype,
        "chunk_rows": cfg.chunk_rows,
        "batching": [cfg.batch_size, cfg.max_batch_tokens],
    }
    for r, theirs in enumerate(ranks.gather(json_norm(mine))):
        msg = _mismatch(out_root, theirs, json_norm(mine))
        if msg:
            lines = msg.splitlines()[1:-1]
            raise StoreMismatchError(
                f"rank {r} and rank {rank} of {world} were given different extractions "
                "(other data, model, tokenizer or options); every rank must run the same command. "
                f"Differences (rank {r} -> rank {rank}):\n" + "\n".join(lines)
            )
    complete = ranks.step(f"prepare {out_root}", lambda: rank == 0 and writer.prepare())[0]
    if complete:
        if rank == 0:
            _say(progress, f"{out_root} is already complete")
        return FeatureStore.open(out_root)

    def work() -> None:
        writer.attach()
        done = writer.completed_chunks()
        todo = [c for c in writer.chunks if c not in done]
        if done:
            _say(
                progress and rank == 0,
                f"resuming {out_root}: rank 0 has {len(done)} of its {len(writer.chunks)} chunks",
            )
        _run_chunks(
            run, tokenizer, records, writer, todo, projector, modules, cfg,
            progress=progress and rank == 0, who=f"rank 0 of {world}: ", **run_kw,
        )  # fmt: skip
        writer.close()

    def finish() -> None:
        if rank == 0:
            writer.finalize()

    try:
        ranks.step("extract", work)
        ranks.step("write the manifest", finish)
    finally:
        writer.close()
    if rank == 0:
        _say(progress, f"{world} ranks wrote {out_root}")
    return FeatureStore.open(out_root)
