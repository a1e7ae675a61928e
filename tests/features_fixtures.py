"""Shared fixtures for the feature tests: tiny config-built Llama/Qwen2 models, a locally trained
byte-level BPE tokenizer, and small data sets. Test modules load them with
``pytest_plugins = ["features_fixtures"]`` (tests/conftest.py is owned by the selection engine);
everything is offline and session-scoped."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

VOCAB = 320

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the quick brown fox jumps over lazy dog add two numbers sum of list python code write a "
    "function return value explain why sky is blue answer question give example translate into "
    "french summarise text step by step reasoning math 1 2 3 4 5 6 7 8 9 0 = + - * / ( ) : ; , ."
).split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 20))) for _ in range(n)]


def make_records(n: int, seed: int = 0) -> list[dict]:
    """Mixed alpaca / prompt-response / chat records with varied lengths."""
    import random

    rng = random.Random(seed)
    texts = make_texts(3 * n, seed)
    out = []
    for i in range(n):
        a, b, c = texts[3 * i : 3 * i + 3]
        kind = i % 4
        if kind == 0:
            out.append({"id": f"r{i}", "instruction": a, "input": b if rng.random() < 0.5 else "",
                        "output": c})  # fmt: skip
        elif kind == 1:
            out.append({"id": f"r{i}", "prompt": a + "\n", "response": c})
        elif kind == 2:
            out.append({"id": f"r{i}", "messages": [
                {"role": "user", "content": a}, {"role": "assistant", "content": b},
                {"role": "user", "content": c}, {"role": "assistant", "content": a}]})  # fmt: skip
        else:
            out.append({"id": f"r{i}", "conversations": [
                {"from": "human", "value": a}, {"from": "gpt", "value": c}]})  # fmt: skip
    return out


def _train_tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = make_texts(400, seed=123) + ["Instruction:\n\nInput:\n\nResponse:\n"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    ht = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat:
        ht.chat_template = CHAT_TEMPLATE
    return ht


def build_llama(vocab: int = VOCAB, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
        attn_implementation="eager",
    )  # fmt: skip
    m = LlamaForCausalLM(cfg).eval()
    return m


def build_qwen2(vocab: int = VOCAB, seed: int = 1):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
        attn_implementation="eager",
    )  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def torch_one_thread():
    """Run a module's tests with one torch thread (tiny models gain nothing from more, and OpenMP
    spin-waiting on a busy 2-core CI box made them 5x slower); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE (vocab 320) with BOS, EOS, pad, no chat template."""
    return _train_tokenizer(chat=False)


@pytest.fixture(scope="session")
def chat_tokenizer():
    """Same BPE with a ChatML-like chat template."""
    return _train_tokenizer(chat=True)


@pytest.fixture(scope="session")
def tiny_llama():
    return build_llama()


@pytest.fixture(scope="session")
def tiny_qwen2():
    return build_qwen2()


@pytest.fixture(scope="session")
def records():
    return make_records(24)


@pytest.fixture(scope="session")
def record_factory():
    """``make_records(n, seed)``: mixed alpaca / prompt-response / chat / ShareGPT records."""
    return make_records


@pytest.fixture(scope="session")
def saved_model_dir(tmp_path_factory, tiny_llama, tokenizer):
    """The tiny Llama and tokenizer saved with save_pretrained (for subprocess tests)."""
    d = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
