"""The command line's selection flags: made from SelectOptions' fields, --conflict-penalty with
its older name --penalty, and per-group quotas read from a record field (--group-field,
--quotas), checked against spice.select(groups=, quotas=) on the same rows."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import spice
from spice import SelectOptions
from spice.cli import build_parser, main

N, D = 48, 6
SOURCES = ("wiki", "code", "math")


def features(seed: int = 0) -> np.ndarray:
    """Rows whose norms grow with the row number within each source, the 'wiki' rows largest:
    unconstrained greedy favours wiki, so a quota on it binds."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((N, D)).astype(np.float32)
    G[0::3] *= 4.0  # rows 0, 3, 6, ... are wiki (see source_of)
    return G


def source_of(i: int) -> str:
    return SOURCES[i % 3]


@pytest.fixture()
def store_and_data(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A spice feature store of N rows and the JSONL records it stands for, each with a
    "source" field."""
    from spice.store import StoreWriter

    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"q{i}", "output": f"a{i}", "source": source_of(i)}) + "\n"
            for i in range(N)
        )
    )
    G = features()
    w = StoreWriter(
        tmp_path / "store", {"data": {"records": N}}, total_rows=N, dim=D, dtype="float32"
    )
    w.prepare()
    index = [
        {"row": r, "id": f"id{r}", "tokens": 5, "loss_tokens": 2, "loss": 1.0, "flags": []}
        for r in range(N)
    ]
    w.write_chunk(0, G, index)
    w.finalize()
    return tmp_path / "store", data, G


def run_select(store: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        ["select", "--features", str(store), "--data", str(data), "--out", str(out), *extra]
    )


def test_quotas_from_a_record_field_are_honoured_and_equal_python(store_and_data, tmp_path, capsys):
    store, data, G = store_and_data
    free = spice.select(G, 12, conflict_penalty=0.0)
    free_wiki = sum(source_of(int(i)) == "wiki" for i in free.indices)
    assert free_wiki > 3  # without quotas wiki takes more than its quota below: the quota binds
    out = tmp_path / "sel"
    extra = ("--k", "12", "--penalty", "0", "--group-field", "source")
    assert run_select(store, data, out, *extra, "--quotas", "wiki=0.25,code=2") == 0
    assert "picks per group: code: 2, math: " in capsys.readouterr().out
    sel = json.loads((out / "selection.json").read_text())
    idx = np.asarray(sel["indices"])
    labels = np.array([source_of(i) for i in range(N)])
    counts = {s: int(np.sum(labels[idx] == s)) for s in SOURCES}
    assert counts["wiki"] <= 3 and counts["code"] <= 2 and len(idx) == 12  # floor(0.25 * 12)
    assert sel["constraints"]["group_counts"] == counts
    assert sel["config"]["group_field"] == "source"
    assert sel["config"]["quotas"] == {"wiki": 0.25, "code": 2}
    ref = spice.select(G, 12, conflict_penalty=0.0, groups=labels, quotas={"wiki": 0.25, "code": 2})
    np.testing.assert_array_equal(idx, ref.indices)
    # the subset is the picked records, whose source fields agree with the counts
    subset = [json.loads(line) for line in (out / "subset.jsonl").read_text().splitlines()]
    assert [r["source"] for r in subset] == labels[idx].tolist()


def test_quotas_read_from_parquet_records(store_and_data, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    store, data, G = store_and_data
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "sel"
    rc = run_select(store, path, out, "--k", "9", "--group-field", "source", "--quotas", "wiki=1")
    assert rc == 0
    labels = np.array([source_of(i) for i in range(N)])
    ref = spice.select(G, 9, groups=labels, quotas={"wiki": 1})
    np.testing.assert_array_equal(np.load(out / "indices.npy"), ref.indices)
    assert int(np.sum(labels[ref.indices] == "wiki")) == 1


def test_penalty_and_conflict_penalty_are_one_setting(store_and_data, tmp_path):
    store, data, _ = store_and_data
    got = []
    for flag in ("--penalty", "--conflict-penalty"):
        out = tmp_path / flag.strip("-")
        assert run_select(store, data, out, "--k", "10", flag, "0.7") == 0
        sel = json.loads((out / "selection.json").read_text())
        assert sel["params"]["conflict_penalty"] == 0.7
        got.append(sel["indices"])
    assert got[0] == got[1]
    p = build_parser()
    base = ["select", "--features", "f", "--data", "d", "--out", "o"]
    assert p.parse_args(base).conflict_penalty == 0.1
    assert p.parse_args([*base, "--penalty", "0.3"]).conflict_penalty == 0.3
    online = ["online", "--model", "m", "--data", "d", "--out", "o"]
    assert p.parse_args(online).conflict_penalty is None  # the preset's
    assert p.parse_args([*online, "--penalty", "0.2"]).conflict_penalty == 0.2
    assert p.parse_args([*online, "--conflict-penalty", "0.2"]).conflict_penalty == 0.2


def test_select_flags_are_made_from_select_options():
    """Every SelectOptions field that names a flag is a flag of select and run with the field's
    default and help; the parsed flags make the SelectOptions the CLI passes on."""
    from spice.cli import _select_options

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flagged = [f for f in dataclasses.fields(SelectOptions) if f.metadata["flag"]]
    assert {f.name for f in flagged} >= {"alpha", "conflict_penalty", "early_stop", "method"}
    for cmd in ("select", "run"):
        actions = {a.option_strings[0]: a for a in sub.choices[cmd]._actions if a.option_strings}
        for f in flagged:
            a = actions[f.metadata["flag"]]
            assert (a.dest, a.default, a.help) == (f.name, f.default, f.metadata["help"])
    args = build_parser().parse_args(
        ["select", "--features", "f", "--data", "d", "--out", "o", "--alpha", "2", "--seed", "5"]
        + ["--method", "naive", "--early-stop", "0.4", "--normalize", "unit"]
    )
    want = SelectOptions(alpha=2.0, seed=5, method="naive", early_stop=0.4, normalize="unit")
    assert _select_options(args) == want


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--quotas", "wiki=2"], "--quotas needs --group-field"),
        (["--group-field", "source"], "--group-field needs --quotas"),
        (
            ["--group-field", "source", "--quotas", "wiki=2,web=3"],
            "quotas name the group(s) 'web', which no record has in its field 'source' "
            "(its groups: code, math, wiki)",
        ),
        (["--group-field", "src", "--quotas", "wiki=2"], ":1: the record has no field 'src'"),
    ],
)
def test_quota_mistakes_are_clear_errors(store_and_data, tmp_path, capsys, extra, needle):
    store, data, _ = store_and_data
    assert run_select(store, data, tmp_path / "sel", "--k", "5", *extra) == 1
    err = capsys.readouterr().err
    assert err.startswith("spice: error: ") and needle in err, err
    assert not (tmp_path / "sel").exists()


def test_a_record_without_the_field_is_named_by_file_and_line(store_and_data, tmp_path, capsys):
    store, data, _ = store_and_data
    lines = data.read_text().splitlines()
    rec = json.loads(lines[6])
    del rec["source"]
    lines[6] = json.dumps(rec)
    lines.insert(3, "")  # a blank line is not a record, but it counts in the line numbers
    data.write_text("\n".join(lines) + "\n")
    rc = run_select(
        store, data, tmp_path / "sel", "--k", "5", "--group-field", "source", "--quotas", "code=1"
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert f"{data}:8: the record has no field 'source'" in err, err
    data.write_text(data.read_text().replace('"source": "math"', '"source": [1]', 1))
    assert run_select(store, data, tmp_path / "s2", "--group-field", "source", "--quotas", "a=1")
    assert f"{data}:3: field 'source' is a list; a group is a string or an integer" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ("wiki", "'wiki' is not group=quota"),
        ("wiki=1.5", "quota of 'wiki' is '1.5': a count"),
        ("wiki=-2", "quota of 'wiki' is -2: a count is >= 0"),
        ("wiki=0.5,wiki=1", "group 'wiki' is given twice"),
    ],
)
def test_bad_quotas_are_refused_before_any_work(capsys, text, needle):
    with pytest.raises(SystemExit) as e:
        main(["select", "--features", "f", "--data", "d", "--out", "o", "--quotas", text])
    assert e.value.code == 2
    assert f"argument --quotas: {needle}" in capsys.readouterr().err


def test_run_checks_the_groups_before_the_model_loads(store_and_data, tmp_path, capsys):
    """spice run reads the group field and checks the quotas' groups before it loads the model
    (here a model that does not exist: the quota error comes first)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    _, data, _ = store_and_data
    argv = ["run", "--model", str(tmp_path / "no-model"), "--data", str(data), "--no-report"]
    argv += ["--out", str(tmp_path / "run"), "--group-field", "source", "--quotas", "web=1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "quotas name the group(s) 'web'" in err, err
    assert not (tmp_path / "run").exists()
