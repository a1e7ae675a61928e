"""The paper's online schedule (SPICE §5): stream the data in random pools, greedily pick a few
from each pool with the SPICE score (greedy state per pool), and every T pools take one AdamW step
of the proxy's LoRA adapters on the picks buffered since the last step, so later pools are scored
by the updated proxy.

Checkpoints (adapter weights, optimizer and schedule state, position in the stream, picks so far)
are written atomically after every optimizer step; a resumed run ends with the same picks as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .selection import select

__all__ = ["OnlineConfig", "OnlineResult", "PRESETS", "run_online", "checkpoint_progress"]


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of the online schedule (defaults: the paper's P = 120, 12 picks, T = 10)."""

    pool_size: int = 120
    picks_per_pool: int = 12
    update_every: int = 10  # T: pools per optimizer step
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "cosine"  # "cosine" | "constant", sized in optimizer steps
    early_stop: float | None = None
    alpha: float = 1.0
    conflict_penalty: float = 0.1
    objective: str = "logdet"
    loss_on: str = "response"
    max_length: int = 512
    batch_size: int = 8
    dim: int = 8192
    projection: str = "factorized"
    lora_r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "up_proj",
        "down_proj",
        "gate_proj",
    )
    seed: int = 0

    def validate(self) -> None:
        if self.pool_size < 1 or self.picks_per_pool < 1 or self.update_every < 1:
            raise ValueError("pool_size, picks_per_pool and update_every must be >= 1")
        if self.picks_per_pool > self.pool_size:
            raise ValueError("picks_per_pool must not exceed pool_size")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError("lr must be > 0")


PRESETS: dict[str, OnlineConfig] = {
    "paper": OnlineConfig(),
    # The authors' released configuration: pools of 128, keep 64, gradient-norm ranking, loss over
    # the whole text. Not the paper's mathematics (see spice.select's objective).
    "authors": OnlineConfig(
        pool_size=128,
        picks_per_pool=64,
        objective="topk-compat",
        conflict_penalty=0.0,
        loss_on="all",
    ),
    "authors-conflict": OnlineConfig(
        pool_size=128,
        picks_per_pool=64,
        objective="diag-compat",
        conflict_penalty=0.1,
        loss_on="all",
    ),
}


@dataclass
class OnlineResult:
    """Picks of an online run (global record indices in pick order) and per-pool statistics."""

    indices: np.ndarray
    pools: list[dict] = field(default_factory=list)
    steps: int = 0
    resumed_from_pool: int = 0


def _lr_lambda(cfg: OnlineConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant" or total_steps <= 1:
            return 1.0
        prog = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, prog)))

    return f


def _pool_features(
    model: Any, tokenizer: Any, records: list, cfg: OnlineConfig, scratch: Path
) -> np.ndarray:
    from .features import extract

    if all(r.skipped for r in records):  # nothing to learn from: zero rows, never picked
        return np.zeros((len(records), 1), dtype=np.float32)
    d = Path(tempfile.mkdtemp(prefix="pool-", dir=scratch))
    try:
        store = extract(
            model,
            tokenizer,
            records,
            out=d,
            dim=cfg.dim,
            projection=cfg.projection,
            lora=None,
            loss_on=cfg.loss_on,
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            dtype="float32",
            seed=cfg.seed,
            resume=False,
            progress=False,
        )
        return np.array(store.features, dtype=np.float32)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _train_step(
    model: Any, tokenizer: Any, records: list, cfg: OnlineConfig, opt: Any, sched: Any
) -> float:
    """One optimizer step on ``records``: mean over samples of each sample's mean response-token
    loss, accumulated over micro-batches. Returns that loss."""
    import torch

    from .features.hooks import forward_logits, per_sample_losses
    from .features.records import tokenize_record

    toks = [
        tokenize_record(r, tokenizer, max_length=cfg.max_length, loss_on=cfg.loss_on)
        for r in records
    ]
    toks = [t for t in toks if t.n_loss_tokens > 0]
    if not toks:
        return float("nan")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for s in range(0, len(toks), cfg.batch_size):
        batch = toks[s : s + cfg.batch_size]
        T = max(len(t.input_ids) for t in batch)
        ids = torch.full((len(batch), T), pad, dtype=torch.long)
        att = torch.zeros((len(batch), T), dtype=torch.long)
        lm = torch.zeros((len(batch), T), dtype=torch.bool)
        for b, t in enumerate(batch):
            L = len(t.input_ids)
            ids[b, :L] = torch.from_numpy(np.asarray(t.input_ids, dtype=np.int64))
            att[b, :L] = 1
            lm[b, :L] = torch.from_numpy(np.asarray(t.loss_mask, dtype=bool))
        logits = forward_logits(model, ids, att)
        losses, _ = per_sample_losses(logits, ids, lm)
        loss = losses.sum() / len(toks)
        loss.backward()
        total += float(loss.detach())
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return total


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def checkpoint_progress(out: str | os.PathLike) -> dict | None:
    """What the checkpoint in ``out`` holds, without loading it (no torch): ``{"next_pool",
    "pools", "picks", "steps"}`` (pools done, pools in all, picks and optimizer steps so far), or
    None when ``out`` has no checkpoint."""
    out = Path(out)
    try:
        info = json.loads((out / "checkpoint.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and (out / "checkpoint.pt").is_file() else None


def run_online(
    model: Any,
    tokenizer: Any,
    data: Any,
    out: str | os.PathLike,
    config: OnlineConfig | None = None,
    *,
    resume: bool = True,
    progress: bool = False,
    stop_after_pools: int | None = None,
) -> OnlineResult:
    """Run the online schedule over ``data`` with ``model`` as the proxy.

    Args:
        model: a causal LM (LoRA adapters are added to it with peft and trained in place).
        tokenizer: its tokenizer.
        data: a data file (JSONL/JSON/Parquet), a ``datasets.Dataset`` or a list of dicts.
        out: directory for ``checkpoint.pt`` (and scratch space).
        config: :class:`OnlineConfig` (default: the paper's schedule).
        resume: continue from ``out/checkpoint.pt`` when it exists and matches.
        stop_after_pools: stop (as if interrupted) after this many pools; for tests.

    Returns:
        :class:`OnlineResult` with the global indices of the picks in pick order.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .features.records import Record, load_records

    cfg = config or OnlineConfig()
    cfg.validate()
    records = (
        list(data)
        if isinstance(data, list) and data and isinstance(data[0], Record)
        else load_records(data)
    )
    n = len(records)
    if n == 0:
        raise ValueError("no records to select from")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = out / "scratch"
    scratch.mkdir(exist_ok=True)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    pools = [perm[i : i + cfg.pool_size] for i in range(0, n, cfg.pool_size)]
    total_steps = math.ceil(len(pools) / cfg.update_every)

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise ValueError(f"the model has none of the LoRA target modules {cfg.target_modules}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        peft_model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=0.0,
                target_modules=targets,
                bias="none",
            ),
        )
    peft_model.eval()
    params = {n_: p for n_, p in peft_model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total_steps))

    ckpt = out / "checkpoint.pt"
    picks: list[int] = []
    stats: list[dict] = []
    buffer: list[int] = []
    start = 0
    steps = 0
    key = {"config": asdict(cfg), "n": n}
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state["key"] != key:
            raise ValueError(
                f"{ckpt} belongs to another run (config or data size differ); "
                "use a new output directory or resume=False"
            )
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state["lora"][name])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, picks, stats, steps = (
            state["next_pool"],
            state["picks"],
            state["stats"],
            state["steps"],
        )

    for pi in range(start, len(pools)):
        if stop_after_pools is not None and pi >= stop_after_pools:
            break
        pool = pools[pi]
        feats = _pool_features(peft_model, tokenizer, [records[j] for j in pool], cfg, scratch)
        k = min(cfg.picks_per_pool, len(pool))
        sel = select(
            feats,
            k,
            alpha=cfg.alpha,
            conflict_penalty=cfg.conflict_penalty,
            early_stop=cfg.early_stop,
            objective=cfg.objective,
            method="lazy",
        )
        chosen = [int(pool[i]) for i in sel.indices]
        picks.extend(chosen)
        buffer.extend(chosen)
        stats.append(
            {
                "pool": pi,
                "size": int(len(pool)),
                "picked": len(chosen),
                "stop_reason": sel.stop_reason,
                "logdet": sel.logdet,
                "first_gain": float(sel.gains[0]) if len(sel) else None,
                "mean_conflict": float(np.mean(sel.conflict)) if len(sel) else 0.0,
            }
        )
        if progress:
            print(f"spice online: pool {pi + 1}/{len(pools)}, {len(picks)} picks", flush=True)
        if (pi + 1) % cfg.update_every == 0 or pi == len(pools) - 1:
            loss = _train_step(peft_model, tokenizer, [records[j] for j in buffer], cfg, opt, sched)
            steps += 1
            stats[-1]["train_loss"] = loss
            buffer = []
            _save_checkpoint(
                ckpt,
                {
                    "key": key,
                    "next_pool": pi + 1,
                    "picks": picks,
                    "stats": stats,
                    "steps": steps,
                    "lora": {k_: v.detach().clone() for k_, v in params.items()},
                    "opt": opt.state_dict(),
                    "sched": sched.state_dict(),
                },
            )
            # a summary beside it, for the message of an interrupted run (read without torch)
            info = {"next_pool": pi + 1, "pools": len(pools), "picks": len(picks), "steps": steps}
            tmp = out / "checkpoint.json.tmp"
            tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
            os.replace(tmp, out / "checkpoint.json")
    shutil.rmtree(scratch, ignore_errors=True)
    return OnlineResult(
        indices=np.asarray(picks, dtype=np.int64), pools=stats, steps=steps, resumed_from_pool=start
    )


def preset(name: str, **overrides: Any) -> OnlineConfig:
    """A named configuration ("paper", "authors", "authors-conflict") with overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
