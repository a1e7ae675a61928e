"""Tiny Llama-style models from configs, a locally trained byte-level BPE tokenizer, a training
loop with a fixed step budget (same steps x batch for every subset), greedy-decoding exact-match
evaluation, and per-sample response losses (for IFD)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tasks import exact_match, tokenizer_corpus

from spice.features.records import parse_record, tokenize_record

VOCAB = 384
MAX_LEN = 48

PROXY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)  # fmt: skip
TARGET = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2)  # fmt: skip


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(tokenizer_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")  # fmt: skip


def build(kind: dict, vocab: int, seed: int, device: str = "cpu"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=128, attn_implementation="eager",
                      tie_word_embeddings=True, **kind)  # fmt: skip
    return LlamaForCausalLM(cfg).to(device)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Tokenized:
    ids: list[np.ndarray]
    mask: list[np.ndarray]


def tokenize(records: list[dict], tokenizer) -> Tokenized:
    ids, mask = [], []
    for i, r in enumerate(records):
        t = tokenize_record(parse_record(r, f"r{i}", f"record {i}"), tokenizer, max_length=MAX_LEN)
        ids.append(t.input_ids)
        mask.append(t.loss_mask)
    return Tokenized(ids, mask)


def _batch(tok: Tokenized, rows: list[int], pad: int):
    T = max(len(tok.ids[r]) for r in rows)
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    y = torch.full((len(rows), T), -100, dtype=torch.long)
    att = torch.zeros((len(rows), T), dtype=torch.long)
    for j, r in enumerate(rows):
        L = len(tok.ids[r])
        x[j, :L] = torch.from_numpy(tok.ids[r])
        att[j, :L] = 1
        lab = torch.from_numpy(tok.ids[r]).clone()
        lab[~torch.from_numpy(tok.mask[r])] = -100
        y[j, :L] = lab
    return x, att, y


@dataclass
class TrainStats:
    steps: int
    examples: int
    tokens: int  # loss tokens seen
    wall_s: float
    final_loss: float


def train(
    model,
    tok: Tokenized,
    subset: np.ndarray,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    pad: int,
) -> TrainStats:
    """AdamW for exactly ``steps`` steps of ``batch_size`` examples drawn by epoch-wise shuffles
    of ``subset`` (so every subset costs the same compute); linear warm-up and decay."""
    t0 = time.perf_counter()
    dev = next(model.parameters()).device
    model.train()
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.05, (steps - s) / max(1, steps - warm)))
    )
    order: list[int] = []
    tokens = 0
    losses = []
    subset = np.asarray(subset, dtype=np.int64)
    for _ in range(steps):
        rows = []
        while len(rows) < batch_size:
            if not order:
                order = list(rng.permutation(subset))
            rows.append(int(order.pop()))
        x, att, y = (t.to(dev) for t in _batch(tok, rows, pad))
        out = model(input_ids=x, attention_mask=att, labels=y)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        tokens += int((y != -100).sum())
        losses.append(float(out.loss))
    model.eval()
    tail = losses[-max(1, steps // 10) :]
    return TrainStats(
        steps,
        steps * batch_size,
        tokens,
        time.perf_counter() - t0,
        float(np.mean(tail)) if tail else math.nan,
    )


@torch.no_grad()
def greedy_answers(
    model, tokenizer, prompts: list[str], max_new: int = 12, batch_size: int = 128
) -> list[str]:
    """Greedy decode (left-padded batches, KV cache) until EOS or ``max_new`` tokens."""
    model.eval()
    out: list[str] = []
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for s in range(0, len(prompts), batch_size):
        enc = [tokenizer(p)["input_ids"] for p in prompts[s : s + batch_size]]
        T = max(map(len, enc))
        x = torch.full((len(enc), T), pad, dtype=torch.long)
        att = torch.zeros((len(enc), T), dtype=torch.long)
        for j, e in enumerate(enc):
            x[j, T - len(e) :] = torch.tensor(e)
            att[j, T - len(e) :] = 1
        dev = next(model.parameters()).device
        gen = model.generate(input_ids=x.to(dev), attention_mask=att.to(dev),
                             max_new_tokens=max_new, do_sample=False, pad_token_id=pad,
                             eos_token_id=eos)  # fmt: skip
        for row in gen[:, T:].cpu().tolist():
            if eos in row:
                row = row[: row.index(eos)]
            out.append(tokenizer.decode(row, skip_special_tokens=True))
    return out


def evaluate(model, tokenizer, test: dict) -> dict[str, float]:
    fams = list(test)
    prompts = [ex.prompt for f in fams for ex in test[f]]
    answers = [ex.answer for f in fams for ex in test[f]]
    preds = greedy_answers(model, tokenizer, prompts)
    acc: dict[str, float] = {}
    i = 0
    for f in fams:
        n = len(test[f])
        acc[f] = float(np.mean([exact_match(p, a) for p, a in
                                zip(preds[i:i + n], answers[i:i + n])]))  # fmt: skip
        i += n
    acc["overall"] = float(np.mean([acc[f] for f in fams]))  # macro average over families
    return acc


@torch.no_grad()
def response_losses(model, tok: Tokenized, pad: int, batch_size: int = 64) -> np.ndarray:
    """Mean cross-entropy over response tokens, per record."""
    model.eval()
    out = np.zeros(len(tok.ids))
    for s in range(0, len(tok.ids), batch_size):
        rows = list(range(s, min(len(tok.ids), s + batch_size)))
        dev = next(model.parameters()).device
        x, att, y = (t.to(dev) for t in _batch(tok, rows, pad))
        logits = model(input_ids=x, attention_mask=att).logits[:, :-1].float()
        tgt = y[:, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt.clamp_min(0),
                                               reduction="none")  # fmt: skip
        m = (tgt != -100).float()
        out[s : s + len(rows)] = ((ce * m).sum(1) / m.sum(1).clamp_min(1)).cpu().numpy()
    return out
