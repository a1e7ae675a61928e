"""Writing a selection back out: the subset in the input's own format, selection.json, per-record
scores, ``indices.npy``, a LLaMA-Factory ``dataset_info.json`` entry, an axolotl dataset entry and
a TRL ``SFTTrainer`` script. Every file is written atomically (a
temporary file in the same directory, then ``os.replace``), so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write",
    "write_subset",
    "write_json",
    "write_scores",
    "dataset_info_entry",
    "record_format",
    "pyarrow_modules",
    "subset_layout",
    "axolotl_snippet",
    "trl_snippet",
    "trl_model",
    "subset_columns",
    "write_indices",
]


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def pyarrow_modules() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, or an error naming the extra that installs them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "Parquet data needs pyarrow, which is not installed: pip "
            "install 'spice-select[parquet]'",
            name="pyarrow",
        ) from e
    return pa, pq


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, deterministic JSON (sorted keys, 1-space indent)."""
    text = json.dumps(_clean(obj), indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return atomic_write(path, text)


def _jsonl_lines(path: Path) -> list[bytes]:
    """Non-blank lines of a JSONL file, as bytes (the records' own text, byte for byte)."""
    with open(path, "rb") as f:
        return [ln.rstrip(b"\r\n") for ln in f if ln.strip()]


def write_subset(data: str | os.PathLike, indices: Sequence[int], out: str | os.PathLike) -> Path:
    """Write records ``indices`` (in that order) of the data file ``data`` to ``out``.

    The format follows the input: JSONL lines are copied byte for byte, a JSON array is written
    as a JSON array of the same objects, Parquet as Parquet (same schema). Record numbering is
    the loader's: the non-blank lines of a JSONL file, the elements of a JSON array, the rows of a
    Parquet file.
    """
    src = Path(data)
    idx = [int(i) for i in indices]
    suffix = src.suffix.lower()
    if suffix == ".parquet":
        pa, pq = pyarrow_modules()
        table = pq.read_table(src)
        sub = table.take(pa.array(idx, type=pa.int64()))
        buf = io.BytesIO()
        pq.write_table(sub, buf)
        return atomic_write(out, buf.getvalue())
    with open(src, "rb") as f:
        head = f.read(4096).lstrip()
    if suffix == ".json" and head.startswith(b"["):
        with open(src, encoding="utf-8") as f:
            arr = json.load(f)
        text = json.dumps([arr[i] for i in idx], ensure_ascii=False, indent=1) + "\n"
        return atomic_write(out, text)
    lines = _jsonl_lines(src)
    return atomic_write(out, b"".join(lines[i] + b"\n" for i in idx))


def record_format(obj: dict) -> str:
    """Which record layout a JSON object uses: alpaca | prompt | messages | sharegpt."""
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "messages"
    if "instruction" in obj:
        return "alpaca"
    return "prompt"


def subset_layout(
    fmt: str,
    sample: dict | None = None,
    columns: Mapping[str, str] | None = None,
    available: Iterable[str] | None = None,
) -> dict[str, Any]:
    """How the written subset's columns make an example, for the snippets other tools read.

    Returns one of ``{"kind": "alpaca", "input": bool}``, ``{"kind": "text", "prompt", "response",
    "system"}`` or ``{"kind": "chat", "messages", "sharegpt": bool, "system"}`` (column names;
    ``system`` may be None). A column mapping (``columns``) decides; otherwise the record layout
    ``fmt`` (:func:`record_format` of the first record, ``sample``) and the columns the file has
    (``available``; the sample's keys when not given).
    """
    have = set(available) if available is not None else set(sample or {})
    if columns:
        system = columns.get("system")
        if "messages" in columns:
            col = columns["messages"]
            msgs = (sample or {}).get(col)
            share = (
                isinstance(msgs, list)
                and bool(msgs)
                and isinstance(msgs[0], dict)
                and "from" in msgs[0]
                and "role" not in msgs[0]
            )
            return {"kind": "chat", "messages": col, "sharegpt": share, "system": system}
        return {
            "kind": "text",
            "prompt": columns["prompt"],
            "response": columns["response"],
            "system": system,
        }
    if fmt == "alpaca":
        return {"kind": "alpaca", "input": "input" in have}
    if fmt == "prompt":
        resp = "response" if "response" in have or not have else "completion"
        if sample is not None and "response" not in sample and "completion" in sample:
            resp = "completion"
        return {"kind": "text", "prompt": "prompt", "response": resp, "system": None}
    if fmt == "messages":
        return {"kind": "chat", "messages": "messages", "sharegpt": False, "system": None}
    return {"kind": "chat", "messages": "conversations", "sharegpt": True, "system": None}


def dataset_info_entry(
    name: str,
    file_name: str,
    fmt: str,
    sample: dict | None = None,
    columns: Mapping[str, str] | None = None,
    available: Iterable[str] | None = None,
) -> dict:
    """A LLaMA-Factory ``dataset_info.json`` entry so the subset can be trained on directly
    (``--dataset_dir`` the folder holding it and ``file_name``). It names only columns the file
    has: see :func:`subset_layout` for ``fmt``, ``sample``, ``columns`` and ``available``."""
    lay = subset_layout(fmt, sample, columns, available)
    entry: dict[str, Any] = {"file_name": file_name}
    if lay["kind"] == "alpaca":
        cols = {"prompt": "instruction", "response": "output"}
        if lay["input"]:
            cols["query"] = "input"
        entry["columns"] = cols
    elif lay["kind"] == "text":
        cols = {"prompt": lay["prompt"], "response": lay["response"]}
        if lay["system"]:
            cols["system"] = lay["system"]
        entry["columns"] = cols
    else:
        entry["formatting"] = "sharegpt"
        cols = {"messages": lay["messages"]}
        if lay["system"]:
            cols["system"] = lay["system"]
        entry["columns"] = cols
        if not lay["sharegpt"]:
            entry["tags"] = {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            }
    return {name: entry}


def _loader(path: Path) -> str:
    """The ``datasets`` builder (and axolotl ``ds_type``) that reads a subset file."""
    return "parquet" if path.suffix.lower() == ".parquet" else "json"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (a JSON string is one)."""
    return json.dumps(text, ensure_ascii=False)


# what the record loader accepts as ShareGPT speakers, for the snippets (role -> speakers)
def _sharegpt_roles() -> dict[str, list[str]]:
    from .features.records.parsing import _SHAREGPT_ROLES

    out: dict[str, list[str]] = {}
    for speaker, role in _SHAREGPT_ROLES.items():
        out.setdefault(role, []).append(speaker)
    return out


def axolotl_snippet(path: str | os.PathLike, layout: Mapping[str, Any]) -> str:
    """An axolotl ``datasets:`` entry (YAML text to paste into a config) that trains on the
    subset file ``path`` (absolute) laid out as ``layout`` (:func:`subset_layout`), with the
    prompt layout spice scored."""
    from .features.records import ALPACA_PROMPT, ALPACA_PROMPT_WITH_INPUT

    path = Path(path)
    lines = [
        "# axolotl: the subset spice selected; paste under your config's top level",
        "datasets:",
        f"  - path: {_q(str(path))}",
        f"    ds_type: {_loader(path)}",
    ]
    kind = layout["kind"]
    if kind == "alpaca":
        lines += ["    type:", "      field_instruction: instruction"]
        if layout["input"]:
            lines.append("      field_input: input")
        fmt = ALPACA_PROMPT_WITH_INPUT if layout["input"] else ALPACA_PROMPT
        lines += [
            "      field_output: output",
            f"      format: {_q(fmt)}",
            f"      no_input_format: {_q(ALPACA_PROMPT)}",
        ]
    elif kind == "text":
        lines += [
            "    type:",
            f"      field_instruction: {_q(layout['prompt'])}",
            f"      field_output: {_q(layout['response'])}",
            '      format: "{instruction}"',
            '      no_input_format: "{instruction}"',
        ]
        if layout["system"]:
            lines = (
                lines[:1]
                + [
                    "# spice scored these rows as a chat (system, user, assistant) in the model's"
                    " chat",
                    "# template; this entry lays them out as plain text with the system text first",
                ]
                + lines[1:]
            )
            lines += [
                f"      field_system: {_q(layout['system'])}",
                '      system_format: "{system}\\n\\n"',
            ]
    else:
        role, content = ("from", "value") if layout["sharegpt"] else ("role", "content")
        lines += [
            "    type: chat_template",
            "    chat_template: tokenizer_default",
            f"    field_messages: {_q(layout['messages'])}",
            "    message_property_mappings:",
            f"      role: {role}",
            f"      content: {content}",
            '    roles_to_train: ["assistant"]',
        ]
        if layout["sharegpt"]:
            lines.append("    roles:")
            for r, speakers in _sharegpt_roles().items():
                lines.append(f"      {r}: [{', '.join(_q(s) for s in speakers)}]")
        if layout["system"]:
            lines.insert(
                1,
                f"# spice read column {layout['system']!r} as a leading system turn; "
                "add it to the messages for axolotl to see it",
            )
    return "\n".join(lines) + "\n"


def trl_model(
    store_config: Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None
) -> tuple[str | None, str | None]:
    """(model path or Hub id, GGUF file name or None) that scored a selection: what ``spice run``
    was given (``extra``: ``model``, ``gguf_file``), else the model a feature store recorded
    (``store_config["model"]["name_or_path"]``; a folder with no ``config.json`` and exactly one
    ``.gguf`` file is that GGUF file). A local path is made absolute; (None, None) when unknown."""
    extra = extra if isinstance(extra, Mapping) else {}
    store_config = store_config if isinstance(store_config, Mapping) else {}
    model = extra.get("model")
    gguf = extra.get("gguf_file")
    if not model:
        rec = store_config.get("model")
        model = rec.get("name_or_path") if isinstance(rec, Mapping) else None
        gguf = None
        p = Path(model) if model else None
        if p is not None and p.is_dir() and not (p / "config.json").is_file():
            found = sorted(q.name for q in p.glob("*.gguf"))
            gguf = found[0] if len(found) == 1 else None
    if not model:
        return None, None
    p = Path(str(model)).expanduser()
    return (str(p.resolve()) if p.exists() else str(model)), (str(gguf) if gguf else None)


_TRL_SCRIPT = '''"""TRL: supervised fine-tuning on the subset spice selected (written by spice).

The records are read from the subset file with spice's own reader and tokenised with its own
tokenize_record: the same records, turns (assistant turns before the first user turn dropped,
a mapped system column as the first turn), prompt layout, truncation and loss mask as spice
scored, handed to TRL's SFTTrainer as input_ids and labels. Needs spice-select[hf] and trl.

    python trl_sft.py [--model PATH_OR_ID] [--gguf-file NAME] [--max-steps N] [--output-dir DIR]
"""

import argparse
import sys

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

try:
    from spice.features.records import load_records, tokenize_record
except ImportError:
    sys.exit("trl_sft.py reads the subset as spice scored it: pip install 'spice-select[hf]'")

SUBSET = {subset}
COLUMNS = {columns}  # spice's column mapping (--columns), or None
MODEL = {model}  # the model spice scored with
GGUF_FILE = {gguf}  # a GGUF file inside MODEL, or None
MAX_LENGTH = {max_length}  # tokens; spice's truncation (the response is kept)
LOSS_ON = {loss_on}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help=f"model path or Hub id (default {{MODEL}})")
    p.add_argument("--gguf-file", default=None, help="GGUF file inside --model")
    p.add_argument("--output-dir", default="sft-output", help="where TRL writes the model")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (default: epochs)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--max-length", type=int, default=MAX_LENGTH)
    args = p.parse_args()
    if args.model is None:  # the recorded GGUF file belongs to the recorded model only
        args.model, args.gguf_file = MODEL, args.gguf_file or GGUF_FILE
    if args.model is None:
        p.error("spice did not record the model it scored with: pass --model")
    return args


def load_model(name, gguf_file):
    """The model in fp32; a GGUF file's weights unpacked into a plain dense model (transformers
    otherwise keeps it marked as quantized, which it refuses to train or save)."""
    kw = {{}}
    if gguf_file:
        kw["gguf_file"] = gguf_file
        try:
            from transformers import GgufConfig

            kw["quantization_config"] = GgufConfig(dequantize=True)
        except ImportError:  # older transformers always unpack GGUF weights
            pass
    model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kw)
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf_file and quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model


def bf16_supported():
    """bf16 mixed precision where the device has it (CUDA with bf16); fp32 everywhere else."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def main():
    args = parse_args()
    kw = {{"gguf_file": args.gguf_file}} if args.gguf_file else {{}}
    tokenizer = AutoTokenizer.from_pretrained(args.model, **kw)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(args.model, args.gguf_file)
    rows, skipped = [], 0
    for record in load_records(SUBSET, columns=COLUMNS):
        tok = tokenize_record(record, tokenizer, max_length=args.max_length, loss_on=LOSS_ON)
        if tok.skipped:  # nothing to learn from (spice gave it a zero row, never picked)
            skipped += 1
            continue
        ids = tok.input_ids.tolist()
        labels = [t if m else -100 for t, m in zip(ids, tok.loss_mask.tolist())]
        rows.append({{"input_ids": ids, "labels": labels}})
    if skipped:
        print(f"trl_sft.py: {{skipped}} record(s) with nothing to learn from left out")
    if not rows:
        sys.exit(f"trl_sft.py: no record of {{SUBSET}} has a token to learn from")
    bf16 = bf16_supported()
    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=args.max_length,
        bf16=bf16,
        fp16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    how = f"{{len(rows)}} records, {{'bf16' if bf16 else 'fp32'}}"
    print(f"trl_sft.py: trained on {{how}}; model in {{args.output_dir}}")


if __name__ == "__main__":
    main()
'''


def trl_snippet(
    path: str | os.PathLike,
    store_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    columns: Mapping[str, str] | None = None,
) -> str:
    """A Python script (text) that fine-tunes with TRL's ``SFTTrainer`` on the subset file
    ``path`` (absolute), runnable as written (``--model``, ``--gguf-file``, ``--max-steps``,
    ``--output-dir`` and a few more).

    The script reads the subset with :func:`spice.features.load_records` (with the same
    ``columns`` mapping) and tokenises it with :func:`spice.features.tokenize_record` at the
    store's ``max_length`` and ``loss_on`` (``store_config``, a feature store's config), so TRL
    trains on the records, turns, tokens and loss mask that spice scored. The model defaults to
    the one that scored (:func:`trl_model` of ``store_config`` and ``extra``); precision is bf16
    where the device supports it and fp32 elsewhere (a CPU).
    """
    cfg = store_config if isinstance(store_config, Mapping) else {}  # another tool's: none
    model, gguf = trl_model(cfg, extra)
    max_length = cfg.get("max_length")
    loss_on = cfg.get("loss_on") if cfg.get("loss_on") in ("response", "all") else "response"
    return _TRL_SCRIPT.format(
        subset=repr(str(Path(path))),
        columns=repr(dict(columns) if columns else None),
        model=repr(model),
        gguf=repr(gguf),
        max_length=int(max_length) if isinstance(max_length, int) and max_length >= 2 else 512,
        loss_on=repr(loss_on),
    )


def subset_columns(path: str | os.PathLike) -> tuple[list[str], dict | None]:
    """(the columns of a written subset file, its first record): every key of a JSON/JSONL
    file's records, a Parquet file's schema."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        _, pq = pyarrow_modules()
        table = pq.read_table(path)
        rows = table.slice(0, 1).to_pylist()
        return list(table.column_names), (rows[0] if rows else None)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        objs = json.loads(text)
    else:
        objs = [json.loads(line) for line in text.splitlines() if line.strip()]
    keys: dict[str, None] = {}
    for obj in objs:
        if isinstance(obj, dict):
            keys.update(dict.fromkeys(obj))
    first = objs[0] if objs and isinstance(objs[0], dict) else None
    return list(keys), first


def write_indices(path: str | os.PathLike, indices: Sequence[int] | np.ndarray) -> Path:
    """The picks as an int64 ``.npy`` array, in pick order (atomic)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(indices, dtype=np.int64))
    return atomic_write(path, buf.getvalue())


def write_scores(
    path: str | os.PathLike,
    ids: Sequence[str],
    base: np.ndarray,
    indices: np.ndarray,
    gains: np.ndarray,
    conflict: np.ndarray,
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Per-record CSV: row, id, base gain, selected, pick rank, Δ at pick, conflict at pick."""
    n = len(ids)
    rank = np.full(n, -1, dtype=np.int64)
    rank[indices] = np.arange(len(indices))
    g = np.full(n, np.nan)
    g[indices] = gains
    c = np.full(n, np.nan)
    c[indices] = conflict
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["row", "id", "base_gain", "selected", "pick_rank", "gain_at_pick", "conflict_at_pick"]
    extra = extra or {}
    w.writerow(cols + list(extra))
    for i in range(n):
        w.writerow(
            [
                i,
                ids[i],
                f"{base[i]:.9g}",
                int(rank[i] >= 0),
                int(rank[i]),
                "" if np.isnan(g[i]) else f"{g[i]:.9g}",
                "" if np.isnan(c[i]) else f"{c[i]:.9g}",
            ]
            + [f"{float(v[i]):.9g}" for v in extra.values()]
        )
    return atomic_write(path, buf.getvalue())
