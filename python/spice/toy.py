"""The embedded default: a synthetic instruction data set, a byte-level BPE tokenizer trained on
it, and a tiny Llama built from a config. Nothing is downloaded; everything is seeded.

Used by ``spice demo`` and by tests. Needs the ``hf`` extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["make_instruction_data", "train_tokenizer", "tiny_llama"]

_NAMES = ["ada", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo"]
_COLORS = ["red", "blue", "green", "gold", "gray", "pink"]


def _family(rng: random.Random, fam: str) -> tuple[str, str, str]:
    if fam == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return "Add the two numbers.", f"{a} + {b}", str(a + b)
    if fam == "sort":
        xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]
        return (
            "Sort the digits in ascending order.",
            " ".join(map(str, xs)),
            " ".join(map(str, sorted(xs))),
        )
    if fam == "reverse":
        w = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 7)))
        return "Reverse the word.", w, w[::-1]
    if fam == "upper":
        w = " ".join(rng.choice(_NAMES) for _ in range(rng.randint(1, 3)))
        return "Write the text in capital letters.", w, w.upper()
    # lookup
    name = rng.choice(_NAMES)
    color = _COLORS[_NAMES.index(name) % len(_COLORS)]
    return "What is the favourite colour of the person?", name, color


FAMILIES = ("add", "sort", "reverse", "upper", "lookup")


def make_instruction_data(
    n: int = 600, seed: int = 0, wrong: float = 0.1, dup: float = 0.05, filler: float = 0.05
) -> list[dict]:
    """Alpaca records from several task families, with defects: a fraction ``wrong`` of records
    with wrong answers (conflicting gradients), exact duplicates and off-task filler."""
    rng = random.Random(seed)
    out: list[dict] = []
    for i in range(n):
        u = rng.random()
        if u < filler:
            words = " ".join(rng.choice(_NAMES + _COLORS) for _ in range(rng.randint(4, 12)))
            rec = {
                "instruction": "Say something.",
                "input": "",
                "output": words,
                "family": "filler",
            }
        elif u < filler + dup and out:
            rec = dict(rng.choice(out))
        else:
            fam = rng.choice(FAMILIES)
            ins, inp, ans = _family(rng, fam)
            if rng.random() < wrong:  # a wrong answer from the same family
                ans = _family(rng, fam)[2]
            rec = {"instruction": ins, "input": inp, "output": ans, "family": fam}
        rec["id"] = f"demo-{i:05d}"
        out.append(rec)
    return out


def train_tokenizer(texts: list[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (BOS/EOS/pad, HF fast tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_llama(vocab_size: int, hidden: int = 64, layers: int = 2, seed: int = 0) -> Any:
    """A Llama causal LM built from a config (random weights, eager attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()
