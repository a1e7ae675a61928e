"""The chunk runner: tokenised records -> batches -> per-sample features, one chunk of rows at
a time into a store writer, with partial saves so that an interrupted run resumes."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..store import StoreError, StoreWriter
from .config import ExtractConfig
from .hooks import GradientCollector, batch_features
from .records import Record, TokenizedRecord, tokenize_record

log = logging.getLogger("spice.features")


def _fmt_time(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m{s % 60:02d}s"
    return f"{s // 60}m{s % 60:02d}s"


def _say(progress: bool, msg: str) -> None:
    log.info(msg)
    if progress:
        print(f"spice.features: {msg}", file=sys.stderr, flush=True)


def _batches(
    lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None
) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        longest = lengths[cur[0]] if cur else lengths[i]
        too_many = len(cur) >= batch_size or (
            max_batch_tokens is not None and cur and (len(cur) + 1) * longest > max_batch_tokens
        )
        if too_many:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def _peak_memory(device: torch.device) -> str:
    """Peak resident memory of this process (and of the GPU when the model is on one)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    out = f"peak {peak / 2**30:.2f} GB"
    if device.type == "cuda":
        out += f", GPU {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GB"
    return out


def _index_row(row: int, record: Record, t: TokenizedRecord, loss: float | None) -> dict:
    entry = {
        "row": row,
        "id": record.id,
        "tokens": len(t.input_ids),
        "loss_tokens": t.n_loss_tokens,
        "loss": loss,
        "flags": t.flags,
    }
    if t.skipped:
        entry["detail"] = t.detail or record.detail
    return entry


def target_uniforms(seed: int, row: int, n: int) -> np.ndarray:
    """The (n,) float64 uniforms in [0, 1) that draw row ``row``'s sampled targets.

    A function of (seed, row) alone, so a record's draw does not depend on its batch, chunk, rank
    or on a resume.
    """
    return np.random.default_rng([int(seed), int(row), 0x7A56E7]).random(n)


def _run_chunks(
    run: nn.Module,
    tokenizer: Any,
    records: Sequence[Record],
    writer: StoreWriter,
    todo: Sequence[int],
    projector: Any,
    modules: Sequence[tuple[str, nn.Module]],
    cfg: ExtractConfig,
    *,
    device: torch.device,
    progress: bool,
    checkpoint_seconds: float,
    who: str = "",
) -> None:
    """Featurise the chunks ``todo`` of ``writer`` as ``cfg`` says: tokenise, resume saved rows,
    run the batches (saving an unfinished chunk every ``checkpoint_seconds``), check the values
    and write each chunk."""
    toks = _tokenize_chunks(records, tokenizer, writer, todo, cfg.max_length, cfg.loss_on)
    partial = {c: writer.load_partial(c) for c in todo}
    saved = {writer.chunk_rows(c)[0] + i for c, p in partial.items() if p for i in p[0]}
    work = [r for r, t in toks.items() if not t.skipped and r not in saved]
    n_rec = len(work)
    n_tok = sum(len(toks[r].input_ids) for r in work)
    n_loss = sum(toks[r].n_loss_tokens for r in work)
    resumed = f" ({len(saved)} rows of unfinished chunks were saved before)" if saved else ""
    _say(
        progress,
        f"{who}{n_rec} records to featurise in {len(todo)} chunk(s){resumed}: {n_tok} tokens "
        f"({n_loss} in the loss), d={projector.dim} {projector.kind}, {len(modules)} layers, on "
        f"{device.type}",
    )
    pad_id = _pad_id(tokenizer)
    meter = _Meter(progress, n_rec, n_tok, device)
    last_save = meter.t0
    collector = GradientCollector(modules, projector)
    warned_fp16 = False
    with collector.attached():
        for c in todo:
            a, b = writer.chunk_rows(c)
            feats, entries = _start_chunk(records, toks, a, b, projector.dim, partial[c])
            live = [i for i in range(b - a) if not toks[a + i].skipped]
            lengths = [len(toks[a + i].input_ids) for i in live]
            # the plan covers the whole chunk so that a resumed chunk runs the same batches
            for plan in _batches(lengths, cfg.batch_size, cfg.max_batch_tokens):
                batch = [live[j] for j in plan if live[j] not in entries]
                if not batch:
                    continue
                ntok = _featurise_batch(
                    run, collector, records, toks, a, batch, pad_id, cfg.sample_seed, device,
                    feats, entries,
                )  # fmt: skip
                now = meter.batch_done(len(batch), ntok)
                if now - last_save >= checkpoint_seconds and len(entries) < b - a:
                    done = sorted(i for i in entries if not toks[a + i].skipped)
                    writer.save_partial(c, done, feats[done], [entries[i] for i in done])
                    last_save = time.perf_counter()
            warned_fp16 = _finish_values(c, feats, cfg.normalize, cfg.dtype, warned_fp16)
            writer.write_chunk(c, feats, [entries[i] for i in range(b - a)])
            last_save = time.perf_counter()
    meter.close()


def _tokenize_chunks(
    records: Sequence[Record],
    tokenizer: Any,
    writer: StoreWriter,
    todo: Sequence[int],
    max_length: int,
    loss_on: str,
) -> dict[int, TokenizedRecord]:
    """The tokenised records of the chunks ``todo``, by row."""
    toks: dict[int, TokenizedRecord] = {}
    for c in todo:
        a, b = writer.chunk_rows(c)
        for r in range(a, b):
            toks[r] = tokenize_record(records[r], tokenizer, max_length=max_length, loss_on=loss_on)
    return toks


def _pad_id(tokenizer: Any) -> int:
    """The token that pads a batch: the tokenizer's pad token, else its eos token, else 0."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = getattr(tokenizer, "eos_token_id", None) or 0
    return pad_id


class _Meter:
    """The progress of a run: the tqdm bar (examples, tokens/s, peak memory) and, after the first
    batch, an estimate of the whole run's time."""

    def __init__(self, progress: bool, n_rec: int, n_tok: int, device: torch.device) -> None:
        self.progress, self.n_tok, self.device = progress, n_tok, device
        self.bar = None
        if progress and n_rec:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=n_rec, unit="ex", desc="spice features", dynamic_ncols=True)
        self.t0 = time.perf_counter()
        self.tok_done = 0
        self.first = True

    def batch_done(self, examples: int, ntok: int) -> float:
        """Count a finished batch of ``examples`` records and ``ntok`` tokens; returns the time."""
        self.tok_done += ntok
        now = time.perf_counter()
        t0, bar = self.t0, self.bar
        if bar is not None:
            bar.update(examples)
            bar.set_postfix_str(
                f"{self.tok_done / max(now - t0, 1e-9):.0f} tok/s, {_peak_memory(self.device)}",
                refresh=False,
            )
        if self.first and self.progress and self.n_tok > ntok:
            est = (now - t0) * self.n_tok / max(ntok, 1)
            msg = f"first batch took {now - t0:.2f}s; estimated total {_fmt_time(est)}"
            log.info(msg)
            if bar is not None:
                bar.write(f"spice.features: {msg}", file=sys.stderr)
        self.first = False
        return now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _start_chunk(
    records: Sequence[Record],
    toks: dict[int, TokenizedRecord],
    a: int,
    b: int,
    dim: int,
    partial: Any,
) -> tuple[np.ndarray, dict[int, dict]]:
    """Rows [a, b)'s features and index entries so far: the rows saved by an interrupted run,
    and the skipped records' zero rows (nothing to run for them)."""
    feats = np.zeros((b - a, dim), dtype=np.float32)
    entries: dict[int, dict] = {}
    if partial is not None:
        done_list, rows_done, index_done = partial
        feats[done_list] = rows_done
        entries.update(zip(done_list, index_done))
    for i in range(b - a):
        t = toks[a + i]
        if t.skipped:  # a zero row: nothing to run
            entries[i] = _index_row(a + i, records[a + i], t, None)
    return feats, entries


def _featurise_batch(
    run: nn.Module,
    collector: GradientCollector,
    records: Sequence[Record],
    toks: dict[int, TokenizedRecord],
    a: int,
    batch: Sequence[int],
    pad_id: int,
    sample_seed: int | None,
    device: torch.device,
    feats: np.ndarray,
    entries: dict[int, dict],
) -> int:
    """One forward and backward over the rows ``a + i`` for i in ``batch``: their features go
    to ``feats[i]`` and their index entries to ``entries[i]``. Returns the batch's tokens
    (padding not counted)."""
    T = max(len(toks[a + i].input_ids) for i in batch)
    ids = torch.full((len(batch), T), int(pad_id), dtype=torch.long)
    am = torch.zeros((len(batch), T), dtype=torch.long)
    lm = torch.zeros((len(batch), T), dtype=torch.bool)
    uni = None
    if sample_seed is not None:
        uni = torch.zeros((len(batch), T), dtype=torch.float64)
    for k, i in enumerate(batch):
        t = toks[a + i]
        n = len(t.input_ids)
        ids[k, :n] = torch.from_numpy(t.input_ids)
        am[k, :n] = 1
        lm[k, :n] = torch.from_numpy(t.loss_mask)
        if uni is not None:
            uni[k, :n] = torch.from_numpy(target_uniforms(sample_seed, a + i, n))
    f, loss, counts = batch_features(
        run, collector, ids.to(device), am.to(device), lm.to(device), uniforms=uni
    )
    f = f.cpu().numpy()
    loss = loss.cpu().numpy()
    for k, i in enumerate(batch):
        feats[i] = f[k]
        ok = int(counts[k]) > 0 and math.isfinite(float(loss[k]))
        entries[i] = _index_row(a + i, records[a + i], toks[a + i], float(loss[k]) if ok else None)
    return int(am.sum())


def _finish_values(
    c: int, feats: np.ndarray, normalize: str, dtype: str, warned_fp16: bool
) -> bool:
    """Scale chunk ``c``'s rows to unit norm when asked, and refuse values its storage dtype cannot
    hold (float16 overflow, NaN/inf); warns once per run of float16 underflow. Returns whether
    that warning has been given."""
    if normalize == "unit":
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        np.divide(feats, norms, out=feats, where=norms > 0)
    if dtype == "float16":
        big = float(np.abs(feats).max()) if feats.size else 0.0
        if not math.isfinite(big) or big > 65504.0:
            raise StoreError(
                f"chunk {c}: feature values up to {big:g} do not fit float16; use "
                "dtype='float32' or normalize='unit'"
            )
        nz = feats != 0
        lost = int((nz & (feats.astype(np.float16) == 0)).sum())
        if lost > 1e-3 * max(1, int(nz.sum())) and not warned_fp16:
            warned_fp16 = True
            log.warning(
                "chunk %d: %d of %d nonzero feature values underflow to 0 in float16; "
                "consider dtype='float32' or normalize='unit'",
                c, lost, int(nz.sum()),
            )  # fmt: skip
    elif not np.isfinite(feats).all():
        raise StoreError(f"chunk {c}: non-finite feature values (NaN/inf gradients)")
    return warned_fp16
