"""Hugging Face datasets in and out: every input form reads as the equivalent JSONL, the column
mapping, and a round trip for every file a selection writes (offline; small synthetic data)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import spice  # noqa: E402
from spice.cli import main  # noqa: E402
from spice.features.records import RecordError, data_fingerprint, load_records  # noqa: E402
from spice.pipeline import select_to_dir  # noqa: E402
from spice.store import FeatureStore, StoreWriter  # noqa: E402

QA = {"prompt": "question", "response": "answer"}


@pytest.fixture(autouse=True)
def _quiet_and_cached(tmp_path, monkeypatch):
    """No progress bars; load_dataset's cache in the test's folder, not the user's."""
    datasets.disable_progress_bars()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def qa_rows(n: int = 12) -> list[dict]:
    """question/answer rows with an id column; row 3's answer is blank (a skipped record)."""
    return [
        {
            "id": f"q{i}",
            "question": f"What is {i} + {i}?",
            "answer": "   " if i == 3 else f"{2 * i}, since {i} + {i} = {2 * i}.",
            "topic": "sums" if i % 2 else "doubles",
        }
        for i in range(n)
    ]


def chat_rows() -> list[dict]:
    """role/content conversations: a normal one, one that starts with the assistant (its lead
    turn is dropped) and an assistant-only one (skipped)."""
    m = lambda r, c: {"role": r, "content": c}  # noqa: E731
    return [
        {"dialog": [m("user", "hi"), m("assistant", "hello")], "sys": "be brief"},
        {
            "dialog": [m("assistant", "earlier reply"), m("user", "and?"), m("assistant", "so")],
            "sys": "",
        },
        {"dialog": [m("assistant", "alone")], "sys": "x"},
        {
            "dialog": [
                m("user", "2+2?"),
                m("assistant", "4"),
                m("user", "3+3?"),
                m("assistant", "6"),
            ],
            "sys": "math",
        },
    ]


def expected_text_records(rows: list[dict]) -> list[tuple]:
    """What the loader must make of question/answer rows, written out by hand."""
    return [
        (
            r["id"],
            "text",
            r["question"],
            r["answer"],
            (),
            "empty_response" if not r["answer"].strip() else "",
        )
        for r in rows
    ]


def fields(records) -> list[tuple]:
    return [(r.id, r.kind, r.prompt, r.response, tuple(r.messages), r.skip) for r in records]


def sha_by_hand(recs: list[tuple]) -> str:
    """The content fingerprint as docs/data.md defines it: sha256 over the normalised records."""
    h = hashlib.sha256()
    for rid, kind, prompt, response, messages, skip in recs:
        h.update(
            json.dumps(
                [rid, kind, prompt, response, list(messages), skip],
                sort_keys=True,
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
        )
    return h.hexdigest()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_store(tmp: Path, fp: dict, n: int, d: int = 8, seed: int = 0) -> Path:
    """A float32 store of random rows for ``n`` records with fingerprint ``fp`` (numpy only)."""
    w = StoreWriter(
        tmp / "store",
        {"data": {**fp, "records": n}},
        total_rows=n,
        dim=d,
        dtype="float32",
        shard_rows=16,
    )
    w.prepare()
    rng = np.random.default_rng(seed)
    for c in w.chunks:
        a, b = w.chunk_rows(c)
        w.write_chunk(
            c,
            rng.standard_normal((b - a, d)),
            [
                {"row": r, "id": str(r), "tokens": 3, "loss_tokens": 1, "loss": 1.0}
                for r in range(a, b)
            ],
        )
    w.finalize()
    return tmp / "store"


def all_forms(tmp: Path, rows: list[dict]) -> dict[str, tuple]:
    """The same rows as every input form: (data, split)."""
    ds = datasets.Dataset.from_list(rows)
    dd = datasets.DatasetDict(train=ds, test=ds.select([0]))
    ds.save_to_disk(str(tmp / "ds"))
    dd.save_to_disk(str(tmp / "dd"))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp / "data.parquet")
    with pa.OSFile(str(tmp / "file.arrow"), "wb") as f:  # the Arrow IPC *file* format
        with pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table)
    stream = sorted((tmp / "ds").glob("*.arrow"))  # what datasets writes: the stream format
    assert len(stream) == 1
    return {
        "Dataset": (ds, None),
        "dd['train']": (dd["train"], None),
        "DatasetDict+split": (dd, "train"),
        "save_to_disk": (tmp / "ds", None),
        "save_to_disk dict": (tmp / "dd", "train"),
        "arrow file": (tmp / "file.arrow", None),
        "arrow stream": (stream[0], None),
        "parquet": (tmp / "data.parquet", None),
    }


# ----------------------------------------------------------------------------------------------
# input


def test_every_input_form_reads_as_the_equivalent_jsonl(tmp_path):
    rows = qa_rows()
    jsonl = write_jsonl(
        tmp_path / "data.jsonl",
        [{"id": r["id"], "prompt": r["question"], "response": r["answer"]} for r in rows],
    )
    want = expected_text_records(rows)
    assert fields(load_records(jsonl)) == want
    want_sha = sha_by_hand(want)
    assert data_fingerprint(jsonl)["sha256"] == want_sha
    for name, (data, split) in all_forms(tmp_path, rows).items():
        got = load_records(data, split=split, columns=QA)
        assert fields(got) == want, name
        assert data_fingerprint(data, split=split, columns=QA)["sha256"] == want_sha, name


def test_native_columns_need_no_mapping_and_nulls_read_as_absent(tmp_path):
    # alpaca rows, some without "input": a table gives them input = null
    rows = [
        {"instruction": "add", "input": "1 2", "output": "3"},
        {"instruction": "greet", "output": "hello"},
    ]
    ds = datasets.Dataset.from_list(rows)
    assert ds[1]["input"] is None
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    want = [
        ("0", "text", "Instruction:\nadd\n\nInput:\n1 2\n\nResponse:\n", "3", (), ""),
        ("1", "text", "Instruction:\ngreet\n\nResponse:\n", "hello", (), ""),
    ]
    assert fields(load_records(jsonl)) == want
    assert fields(load_records(ds)) == want
    assert data_fingerprint(ds)["sha256"] == data_fingerprint(jsonl)["sha256"] == sha_by_hand(want)


def test_chat_columns_and_system_mapping(tmp_path):
    rows = chat_rows()
    ds = datasets.Dataset.from_list(rows)
    # the JSONL a user would write for the same data: messages with the system turn first
    equiv = [
        {"messages": ([{"role": "system", "content": r["sys"]}] if r["sys"] else []) + r["dialog"]}
        for r in rows
    ]
    jsonl = write_jsonl(tmp_path / "chat.jsonl", equiv)
    got = load_records(ds, columns={"messages": "dialog", "system": "sys"})
    assert fields(got) == fields(load_records(jsonl))
    sys_, u, a = (
        {"role": r, "content": c}
        for r, c in (("system", "be brief"), ("user", "hi"), ("assistant", "hello"))
    )
    assert got[0].kind == "chat" and got[0].messages == (sys_, u, a)
    assert got[1].messages == (
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "so"},
    )
    assert "dropped_leading_turns" in got[1].notes
    assert got[2].skip == "no_user_turn_before_assistant" and got[3].skip == ""
    assert (
        data_fingerprint(ds, columns={"messages": "dialog", "system": "sys"})["sha256"]
        == data_fingerprint(jsonl)["sha256"]
    )
    # ShareGPT turns (from/value) in an oddly named column read as ShareGPT
    share = datasets.Dataset.from_list(
        [{"turns": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]
    )
    [rec] = load_records(share, columns={"messages": "turns"})
    assert rec.messages == (u, a)
    # prompt/response with a system column: a chat of system, user, assistant
    qa = datasets.Dataset.from_list(
        [{"q": "hi", "a": "hello", "s": "be brief"}, {"q": "yo", "a": "hey", "s": None}]
    )
    r0, r1 = load_records(qa, columns={"prompt": "q", "response": "a", "system": "s"})
    assert r0.kind == "chat" and r0.messages == (sys_, u, a)
    assert (r1.kind, r1.prompt, r1.response) == ("text", "yo", "hey")


def test_columns_map_json_files_too(tmp_path):
    rows = qa_rows(5)
    plain = write_jsonl(
        tmp_path / "plain.jsonl",
        [{"id": r["id"], "prompt": r["question"], "response": r["answer"]} for r in rows],
    )
    odd = write_jsonl(tmp_path / "odd.jsonl", rows)
    assert fields(load_records(odd, columns=QA)) == fields(load_records(plain))
    # a record missing a mapped column is a record error (skippable), naming the column
    broken = write_jsonl(tmp_path / "broken.jsonl", [rows[0], {"id": "x", "question": "q"}])
    with pytest.raises(
        RecordError,
        match=r"broken.jsonl:2: column 'answer' \(mapped as "
        r"response\) is missing or null; the record has "
        r"\['id', 'question'\]",
    ):
        load_records(broken, columns=QA)
    recs = load_records(broken, columns=QA, invalid="skip")
    assert [r.skip for r in recs] == ["", "invalid_record"]


def test_bad_mappings_and_splits_are_clear_errors(tmp_path):
    ds = datasets.Dataset.from_list(qa_rows(3))
    with pytest.raises(
        RecordError,
        match=r"no column 'questio' \(mapped as prompt=questio\); "
        r"its columns: answer, id, question, topic",
    ):
        load_records(ds, columns={"prompt": "questio", "response": "answer"})
    with pytest.raises(
        ValueError,
        match=r"unknown field 'instruction'; the fields are prompt, "
        r"response, messages, system",
    ):
        load_records(ds, columns={"instruction": "question", "response": "answer"})
    with pytest.raises(ValueError, match="prompt is mapped but response is not"):
        load_records(ds, columns={"prompt": "question"})
    with pytest.raises(ValueError, match="not both"):
        load_records(
            ds, columns={"messages": "question", "prompt": "question", "response": "answer"}
        )
    with pytest.raises(
        RecordError,
        match=r"dataset: row 0: column 'topic' \(mapped as "
        r"response\) is missing or null",
    ):
        load_records(
            datasets.Dataset.from_list([{"q": "a", "topic": None}]),
            columns={"prompt": "q", "response": "topic"},
        )
    with pytest.raises(RecordError, match=r"column 'n' \(response\) must be a string, got int"):
        load_records(
            datasets.Dataset.from_list([{"q": "a", "n": 1}]),
            columns={"prompt": "q", "response": "n"},
        )
    dd = datasets.DatasetDict(train=ds, validation=ds)
    with pytest.raises(
        ValueError,
        match=r"DatasetDict with splits train, validation: choose "
        r"one",
    ):
        load_records(dd)
    with pytest.raises(ValueError, match=r"has no split 'test'; its splits: train, validation"):
        load_records(dd, split="test")
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"has no split 'tset'; its splits: train, validation"):
        load_records(tmp_path / "dd", split="tset", columns=QA)
    with pytest.raises(ValueError, match="applies to a DatasetDict"):
        load_records(ds, split="train")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a datasets save_to_disk folder"):
        load_records(tmp_path / "plain")


def test_cli_refuses_bad_columns_and_splits(tmp_path, capsys):
    rows = qa_rows(6)
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd"))
    fp = data_fingerprint(tmp_path / "dd", split="train", columns=QA)
    store = make_store(tmp_path, fp, len(rows))
    base = ["select", "--features", str(store), "--data", str(tmp_path / "dd"), "--k", "2"]
    with pytest.raises(SystemExit) as e:  # refused by the option parser, before any work
        main(
            [
                *base,
                "--split",
                "train",
                "--columns",
                "prompt=question",
                "--out",
                str(tmp_path / "a"),
            ]
        )
    assert e.value.code == 2
    assert "argument --columns: prompt is mapped but response is not" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--columns", "prompt:question", "--out", str(tmp_path / "a")])
    assert "'prompt:question' is not key=column" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--split",
                "train",
                "--columns",
                "prompt=q,response=answer",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "no column 'q' (mapped as prompt=q); its columns: answer, id, question, topic" in err
    assert (
        main([*base, "--columns", "prompt=question,response=answer", "--out", str(tmp_path / "a")])
        == 1
    )
    assert "DatasetDict with splits train: choose one (--split train" in capsys.readouterr().err
    assert (
        main(
            [
                *base,
                "--split",
                "dev",
                "--columns",
                "prompt=question,response=answer",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 1
    )
    assert "has no split 'dev'; its splits: train" in capsys.readouterr().err
    # the data read without the mapping the store was made with is other data
    assert (
        main(
            [
                *base,
                "--split",
                "train",
                "--columns",
                "prompt=question,response=topic",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 1
    )
    assert "the records' content differs" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------------------------
# output


def check_snippets(
    out: Path, subset_file: Path, rows: list[dict], expect_trl: list[dict], loader: str
) -> None:
    """The axolotl entry parses and names the written file; the TRL script names the written file
    and its reading of it gives exactly ``expect_trl`` (the usable records, in TRL's terms)."""
    yaml_text = (out / "axolotl_dataset.yaml").read_text()
    try:
        import yaml
    except ImportError:
        assert str(subset_file) in yaml_text
    else:
        cfg = yaml.safe_load(yaml_text)
        [entry] = cfg["datasets"]
        assert Path(entry["path"]) == subset_file and subset_file.is_file()
        assert entry["ds_type"] == loader
        names = {k for r in rows for k in r}
        typ = entry["type"]
        if isinstance(typ, dict):  # field_* name columns of the file
            used = {v for k, v in typ.items() if k.startswith("field_")}
        else:
            used = {entry["field_messages"]}
        assert used and used <= names, (used, names)
    # the TRL script (run with the real trl in tests/test_trl_script.py) reads the written file
    # with spice's reader and mapping: the records it trains on are those spice scored
    code = (out / "trl_sft.py").read_text()
    consts = {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in ast.parse(code).body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert Path(consts["SUBSET"]) == subset_file
    read = load_records(consts["SUBSET"], columns=consts["COLUMNS"])
    got = [
        {"prompt": r.prompt, "completion": r.response}
        if r.kind == "text"
        else {"messages": list(r.messages)}
        for r in read
        if not r.skipped
    ]
    assert got == expect_trl


def test_selection_of_a_dataset_dict_folder_round_trips(tmp_path):
    rows = qa_rows(24)
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(rows), test=datasets.Dataset.from_list(rows[:2])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    fp = data_fingerprint(tmp_path / "dd", split="train", columns=QA)
    store = make_store(tmp_path, fp, len(rows))
    out = tmp_path / "sel"
    assert (
        main(
            [
                "select",
                "--features",
                str(store),
                "--data",
                str(tmp_path / "dd"),
                "--split",
                "train",
                "--columns",
                "prompt=question,response=answer",
                "--k",
                "7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    picks = spice.select(FeatureStore.open(store), 7).indices.tolist()  # the selector's answer
    want = [rows[i] for i in picks]
    assert len(set(picks)) == 7
    sel = json.loads((out / "selection.json").read_text())
    assert sel["indices"] == picks and sel["config"]["columns"] == QA
    assert sel["config"]["split"] == "train"
    idx = np.load(out / "indices.npy")
    assert idx.dtype == np.int64 and idx.tolist() == picks
    # the flattened save_to_disk folder: exactly the picked rows, in pick order
    sub = datasets.load_from_disk(str(out / "subset"))
    assert sub.to_list() == want and sub._indices is None
    # Parquet, read the way a user would
    pqt = datasets.load_dataset(
        "parquet",
        data_files=str(out / "subset.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert pqt.to_list() == want
    # LLaMA-Factory: the entry names a file in the folder and columns that file has
    info = json.loads((out / "dataset_info.json").read_text())
    entry = info["spice_subset"]
    assert entry["columns"] == {"prompt": "question", "response": "answer"}
    assert "formatting" not in entry  # alpaca layout: prompt + response columns
    assert (out / entry["file_name"]).is_file()
    assert set(entry["columns"].values()) <= set(pq.read_schema(out / entry["file_name"]).names)
    check_snippets(
        out,
        (out / "subset.parquet").resolve(),
        rows,
        [{"prompt": r["question"], "completion": r["answer"]} for r in want if r["answer"].strip()],
        "parquet",
    )
    # rerunning over the previous result replaces its folder
    assert (
        main(
            [
                "select",
                "--features",
                str(store),
                "--data",
                str(tmp_path / "dd"),
                "--split",
                "train",
                "--columns",
                "prompt=question,response=answer",
                "--k",
                "3",
                "--out",
                str(out),
                "--overwrite",
            ]
        )
        == 0
    )
    assert datasets.load_from_disk(str(out / "subset")).to_list() == want[:3]


def test_chat_dataset_object_and_arrow_file_outputs(tmp_path):
    rows = chat_rows()
    ds = datasets.Dataset.from_list(rows)
    cols = {"messages": "dialog", "system": "sys"}
    store = make_store(tmp_path, data_fingerprint(ds, columns=cols), len(rows))
    out = tmp_path / "sel"
    sel = select_to_dir(FeatureStore.open(store), ds, out, 3, columns=cols)
    picks = sel.indices.tolist()
    want = [rows[i] for i in picks]
    assert datasets.load_from_disk(str(out / "subset")).to_list() == want
    entry = json.loads((out / "dataset_info.json").read_text())["spice_subset"]
    assert entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "dialog", "system": "sys"}
    assert entry["tags"]["role_tag"] == "role" and entry["tags"]["content_tag"] == "content"
    have = set(pq.read_schema(out / entry["file_name"]).names)
    assert set(entry["columns"].values()) <= have

    # the messages TRL gets: spice's reading, the system column as a first turn when non-empty,
    # the assistant turns before the first user turn left out; an assistant-only chat is skipped
    def scored(dialog: list[dict]) -> list[dict]:
        first_user = next(i for i, m in enumerate(dialog) if m["role"] == "user")
        return [m for i, m in enumerate(dialog) if i >= first_user or m["role"] != "assistant"]

    expect = [
        {
            "messages": ([{"role": "system", "content": r["sys"]}] if r["sys"] else [])
            + scored(r["dialog"])
        }
        for r in want
        if any(m["role"] == "user" for m in r["dialog"])
    ]
    check_snippets(out, (out / "subset.parquet").resolve(), rows, expect, "parquet")
    # an .arrow file input (IPC file format) gives the same files
    (tmp_path / "forms").mkdir()
    forms = all_forms(tmp_path / "forms", qa_rows(10))
    arrow = forms["arrow file"][0]
    store2 = make_store(tmp_path / "forms", data_fingerprint(arrow, columns=QA), 10)
    out2 = tmp_path / "sel-arrow"
    sel2 = select_to_dir(FeatureStore.open(store2), arrow, out2, 4, columns=QA)
    rows10 = qa_rows(10)
    assert datasets.load_from_disk(str(out2 / "subset")).to_list() == [
        rows10[i] for i in sel2.indices
    ]
    assert pq.read_table(out2 / "subset.parquet").to_pylist() == [rows10[i] for i in sel2.indices]


def test_jsonl_selection_writes_snippets_for_its_own_file(tmp_path):
    rows = [{"instruction": f"say {i}", "output": f"{i}"} for i in range(9)]
    rows[4]["input"] = "loudly"
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    store = make_store(tmp_path, data_fingerprint(data), len(rows))
    out = tmp_path / "sel"
    sel = select_to_dir(FeatureStore.open(store), data, out, 9)
    picks = sel.indices.tolist()
    assert np.load(out / "indices.npy").tolist() == picks
    subset = out / "subset.jsonl"
    want = [rows[i] for i in picks]
    assert [json.loads(x) for x in subset.read_text().splitlines()] == want
    got = datasets.load_dataset(
        "json", data_files=str(subset), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert [{k: v for k, v in r.items() if v is not None} for r in got.to_list()] == want
    entry = json.loads((out / "dataset_info.json").read_text())["spice_subset"]
    assert entry == {
        "file_name": "subset.jsonl",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }

    def prompt(r: dict) -> str:
        if r.get("input"):
            return f"Instruction:\n{r['instruction']}\n\nInput:\n{r['input']}\n\nResponse:\n"
        return f"Instruction:\n{r['instruction']}\n\nResponse:\n"

    check_snippets(
        out,
        subset.resolve(),
        rows,
        [{"prompt": prompt(r), "completion": r["output"]} for r in want],
        "json",
    )
    # without any "input" in the data, the entry names no query column
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"instruction": "a", "output": "b"}] * 3)
    (tmp_path / "p").mkdir()
    store2 = make_store(tmp_path / "p", data_fingerprint(plain), 3)
    select_to_dir(FeatureStore.open(store2), plain, tmp_path / "sel2", 1)
    entry = json.loads((tmp_path / "sel2" / "dataset_info.json").read_text())["spice_subset"]
    assert entry["columns"] == {"prompt": "instruction", "response": "output"}


def test_selection_subset(tmp_path):
    rows = qa_rows(20)
    ds = datasets.Dataset.from_list(rows)
    G = np.random.default_rng(1).standard_normal((20, 6))
    sel = spice.select(G, 5)
    sub = sel.subset(ds)
    assert sub.to_list() == [rows[i] for i in sel.indices]
    assert sub._indices is None  # flattened: no indices mapping onto the full data
    # a shuffled view of the same data works too (select reads through its indices)
    view = ds.select(list(range(19, -1, -1)))
    assert sel.subset(view).to_list() == [rows[19 - i] for i in sel.indices]
    with pytest.raises(
        ValueError,
        match=r"the dataset has 19 rows but the selection was made "
        r"from 20",
    ):
        sel.subset(ds.select(range(19)))
    with pytest.raises(TypeError, match=r"one split .*its splits: test, train"):
        sel.subset(datasets.DatasetDict(train=ds, test=ds))
    with pytest.raises(TypeError, match="needs a datasets.Dataset"):
        sel.subset(rows)


def test_features_from_a_dataset_folder_equal_those_from_its_jsonl(tmp_path):
    """spice features passes --split and --columns to the loader: same fingerprint, same rows."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from spice import toy

    rows = qa_rows(8)
    jsonl = write_jsonl(
        tmp_path / "data.jsonl",
        [{"id": r["id"], "prompt": r["question"], "response": r["answer"]} for r in rows],
    )
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows)).save_to_disk(str(tmp_path / "dd"))
    tok = toy.train_tokenizer([r["question"] + r["answer"] for r in rows], 300)
    model = toy.tiny_llama(len(tok), seed=1)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    opts = ["--model", str(tmp_path / "model"), "--dim", "16", "--max-length", "32", "--quiet"]
    assert (
        main(
            [
                "features",
                *opts,
                "--data",
                str(tmp_path / "dd"),
                "--split",
                "train",
                "--columns",
                "prompt=question,response=answer",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    assert main(["features", *opts, "--data", str(jsonl), "--out", str(tmp_path / "b")]) == 0
    a, b = FeatureStore.open(tmp_path / "a"), FeatureStore.open(tmp_path / "b")
    assert (
        a.config["data"]["sha256"]
        == b.config["data"]["sha256"]
        == sha_by_hand(expected_text_records(rows))
    )
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.index.skipped().tolist() == [3]  # the blank answer
    # a store made from the folder selects with the JSONL as its data (same content)
    assert (
        main(
            [
                "select",
                "--features",
                str(tmp_path / "a"),
                "--data",
                str(jsonl),
                "--k",
                "3",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
