"""What a new user meets first: data errors before the model loads, a select that says which
mistake was made, an interrupted command that says what it saved and how to go on, help that
agrees with the behaviour, and install lines that bring what the tests need."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from spice.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--dim", "16", "--max-length", "48", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny saved model, 60 records, the same records under other field names, and a feature
    store of each (the second made with --columns)."""
    from spice import toy

    d = tmp_path_factory.mktemp("first-hour")
    data = toy.make_instruction_data(60, seed=5)
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    qa = [{"question": r["instruction"] + " " + r["input"], "answer": r["output"]} for r in data]
    (d / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in qa))
    tok = toy.train_tokenizer([r["instruction"] + r["input"] + r["output"] for r in data], 300)
    model = toy.tiny_llama(len(tok), seed=1)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    m = ["--model", str(d / "model")]
    assert (
        main(["features", *m, "--data", str(d / "data.jsonl"), "--out", str(d / "store"), *SMALL])
        == 0
    )
    qa_args = ["--data", str(d / "qa.jsonl"), "--columns", "prompt=question,response=answer"]
    assert main(["features", *m, *qa_args, "--out", str(d / "qa-store"), *SMALL]) == 0
    return d


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test (the message would name it)."""
    import spice.pipeline

    def refuse(*args, **kw):
        raise AssertionError("MODEL WAS LOADED")

    monkeypatch.setattr(spice.pipeline, "load_model", refuse)


def _broken(work: Path, d: Path) -> Path:
    lines = (work / "data.jsonl").read_text().splitlines(keepends=True)
    bad = d / "broken.jsonl"
    # a raw control character inside a string: json says "Invalid control character at"
    bad.write_text(lines[0] + '{"instruction": "a\x01b", "input": "", "output": "c"}\n' + lines[2])
    return bad


def _cases(work: Path, d: Path) -> list[tuple[Path, str]]:
    empty = d / "empty.jsonl"
    empty.write_text("")
    blank = d / "blank.jsonl"
    blank.write_text("\n\n")
    return [
        (d / "missing.jsonl", "missing.jsonl: no such file or folder"),
        (_broken(work, d), "broken.jsonl:2: invalid JSON (Invalid control character at column 19)"),
        (empty, "empty.jsonl holds no records (an empty file)"),
        (blank, "blank.jsonl holds no records"),
    ]


@pytest.mark.parametrize("cmd", ["features", "run", "online"])
def test_data_errors_come_before_the_model(work, tmp_path, capsys, no_model_load, cmd):
    for data, needle in _cases(work, tmp_path):
        # a model that does not exist either: the data's error must be the one reported
        argv = [cmd, "--model", str(tmp_path / "no-model"), "--data", str(data)]
        rc = main([*argv, "--out", str(tmp_path / f"out-{cmd}"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 1, err
        assert needle in err, err
        assert "at at" not in err and "MODEL WAS LOADED" not in err and "no-model" not in err
        assert not (tmp_path / f"out-{cmd}").exists()


def test_skip_invalid_still_runs_past_a_broken_line(work, tmp_path, capsys):
    bad = _broken(work, tmp_path)
    argv = ["features", "--model", str(work / "model"), "--data", str(bad), *SMALL]
    assert main([*argv, "--out", str(tmp_path / "f"), "--skip-invalid"]) == 0
    skipped = (tmp_path / "f" / "skipped.jsonl").read_text()
    assert "broken.jsonl:2: invalid JSON" in skipped


def test_k_beyond_the_rows_states_the_real_range(work, tmp_path, capsys, no_model_load):
    store = ["--features", str(work / "store"), "--data", str(work / "data.jsonl")]
    assert main(["select", *store, "--k", "500", "--out", str(tmp_path / "s")]) == 1
    assert "--k 500 is out of range: need 1 <= k <= 60 (60 rows in" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # 0 is refused when parsed, before anything is read
        main(["select", *store, "--k", "0", "--out", str(tmp_path / "s")])
    assert "0 is out of range [1, inf]" in capsys.readouterr().err
    # run knows the record count before the model loads
    argv = ["run", "--model", str(work / "model"), "--data", str(work / "data.jsonl"), "--k", "61"]
    assert main([*argv, "--out", str(tmp_path / "r"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "need 1 <= k <= 60 (60 records in" in err and "MODEL WAS LOADED" not in err
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def _select(store: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--features", str(store), "--data", str(data), "--out", str(out), *extra]


def test_select_says_which_mistake(work, tmp_path, capsys):
    cases = _cases(work, tmp_path)
    store = work / "store"
    assert main(_select(store, cases[1][0], tmp_path / "a")) == 1
    err = capsys.readouterr().err
    assert "was made from other data" in err
    assert "broken.jsonl:2: invalid JSON (Invalid control character at column 19)" in err
    assert main(_select(store, cases[2][0], tmp_path / "b")) == 1
    assert "empty.jsonl holds no records; it was made from 60 records" in capsys.readouterr().err
    # the store made with --columns, read without them
    assert main(_select(work / "qa-store", work / "qa.jsonl", tmp_path / "c")) == 1
    err = capsys.readouterr().err
    assert "it was made with --columns prompt=question,response=answer" in err
    assert "reads " + str(work / "qa.jsonl") + " with none" in err
    # and the other way round
    cols = ["--columns", "prompt=instruction,response=output"]
    assert main(_select(store, work / "data.jsonl", tmp_path / "d", *cols)) == 1
    assert "it was made with no --columns" in capsys.readouterr().err
    assert main(_select(work / "qa-store", work / "qa.jsonl", tmp_path / "e", "--columns",
                        "prompt=question,response=answer", "--k", "3")) == 0  # fmt: skip
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_an_older_store_without_recorded_columns_gets_a_hint(work, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(work / "qa-store", old)
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest.pop("data_read") == {
        "split": None,
        "columns": {"prompt": "question", "response": "answer"},
    }
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert main(_select(old, work / "qa.jsonl", tmp_path / "s")) == 1
    err = capsys.readouterr().err
    assert "qa.jsonl:1: " in err and "(60 of its 60 records are invalid)" in err
    assert "if the features were made with --columns, pass the same --columns here" in err


def _resume_line(err: str) -> list[str]:
    """The command an interrupted run prints, as argv for main()."""
    line = next(x for x in err.splitlines() if "to go on, run again: " in x)
    words = shlex.split(line.split("to go on, run again: ", 1)[1])
    assert words[0] == "spice"
    return words[1:]


def test_interrupted_features_say_what_was_saved_and_resume(work, tmp_path, capsys, monkeypatch):
    from spice.store import StoreWriter

    real = StoreWriter.write_chunk

    def one_then_stop(self, chunk, rows, index_rows):
        real(self, chunk, rows, index_rows)
        raise KeyboardInterrupt

    def stop(self, chunk, rows, index_rows):
        raise KeyboardInterrupt

    out = tmp_path / "my feats"  # a space: the printed command must quote it
    argv = ["features", "--model", str(work / "model"), "--data", str(work / "data.jsonl")]
    argv += ["--out", str(out), "--chunk-rows", "20", *SMALL]
    monkeypatch.setattr(StoreWriter, "write_chunk", stop)
    assert main(argv) == 130
    assert f"no rows saved yet in {out}" in capsys.readouterr().err
    monkeypatch.setattr(StoreWriter, "write_chunk", one_then_stop)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"1 of 3 chunks finished (20 of 60 rows) saved in {out}" in err
    again = _resume_line(err)
    assert again == argv
    monkeypatch.setattr(StoreWriter, "write_chunk", real)
    assert main(again) == 0
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_interrupted_select_and_run_say_nothing_is_half_written(
    work, tmp_path, capsys, monkeypatch
):
    import spice.pipeline

    def stop(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(spice.pipeline, "select", stop)
    argv = _select(work / "store", work / "data.jsonl", tmp_path / "sel", "--k", "5")
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"nothing saved (the selection writes {tmp_path / 'sel'} only when it finishes)" in err
    assert _resume_line(err) == argv
    assert not (tmp_path / "sel").exists()
    argv = ["run", "--model", str(work / "model"), "--data", str(work / "data.jsonl")]
    argv += ["--out", str(tmp_path / "run"), "--no-report", *SMALL]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"the features are complete in {tmp_path / 'run' / 'features'} (60 rows)" in err
    assert "the selection is written only when it finishes, so it starts over" in err
    assert _resume_line(err) == argv


def test_interrupted_online_names_its_checkpoint(work, tmp_path, capsys, monkeypatch):
    import spice.online

    real = spice.online._pool_features
    calls = []

    def two_then_stop(*args, **kw):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(spice.online, "_pool_features", two_then_stop)
    argv = ["online", "--model", str(work / "model"), "--data", str(work / "data.jsonl")]
    argv += ["--out", str(tmp_path / "on"), "--pool-size", "10", "--picks-per-pool", "2"]
    argv += ["--update-every", "1", "--restart", *SMALL]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "checkpoint after 2 of 6 pools (4 picks, 2 proxy updates)" in err
    again = _resume_line(err)
    assert again == [a for a in argv if a != "--restart"]  # --restart would throw it away
    monkeypatch.setattr(spice.online, "_pool_features", real)
    assert main(again) == 0
    sel = json.loads((tmp_path / "on" / "selection.json").read_text())
    assert len(sel["indices"]) == 12 and len(calls) == 3  # resumed: pools 1-2 not rescored
    # --restart, stopped before its first checkpoint: the old one is not offered for resuming
    calls.clear()
    monkeypatch.setattr(spice.online, "_pool_features", two_then_stop)
    calls.extend([1, 1])
    assert main([*argv, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "nothing saved yet (the first checkpoint" in err
    assert _resume_line(err) == [*argv, "--overwrite"]


def test_interrupted_before_anything_was_saved(work, tmp_path, capsys, monkeypatch):
    import spice.online
    import spice.toy

    def stop(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(spice.online, "_pool_features", stop)
    argv = ["online", "--model", str(work / "model"), "--data", str(work / "data.jsonl")]
    assert main([*argv, "--out", str(tmp_path / "on"), *SMALL]) == 130
    assert "nothing saved yet (the first checkpoint" in capsys.readouterr().err
    monkeypatch.setattr(spice.toy, "make_instruction_data", stop)
    argv = ["demo", "--out", str(tmp_path / "demo"), "--quick"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "nothing kept (a demo starts over)" in err and _resume_line(err) == argv


def test_help_agrees_with_the_behaviour(work, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = capsys.readouterr().out
    assert "10%" in text and "%%" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "10%" in capsys.readouterr().out
    for cmd in ("select", "run"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "[--fraction FRACTION | --k K]" in text and "overrides" not in text
        assert "1 <= k <= the number of rows (instead of --fraction)" in text
    with pytest.raises(SystemExit) as e:  # the two are exclusive, as the usage says
        main(_select(work / "store", work / "data.jsonl", tmp_path / "x", "--k", "3",
                     "--fraction", "0.1"))  # fmt: skip
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- the install lines ----------------------------------------------------------------------------


def _extras(line: str) -> set[str]:
    m = re.search(r"""["']?\.\[([a-z0-9,-]+)\]["']?""", line)
    assert m, line
    return set(m.group(1).split(","))


def test_the_install_lines_bring_what_the_tests_need():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=!~ \[]", d)[0] for d in extras["test"]}
    assert {"pytest", "ml_dtypes", "trl", "scipy", "hypothesis"} <= names
    # CI installs torch, then extras only: nothing by hand that a user would not get
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    ci = [x for x in ci if "pip install" in x and not x.lstrip().startswith("#")]
    assert len(ci) == 2 and ci[0].split("pip install")[1].split() == ["-q", "torch==2.13.0"]
    assert ci[1].split("pip install")[1].split()[:-1] == ["-q"]
    ci_extras = _extras(ci[1])
    # the README's test command installs the same extras (CI adds lint for its ruff check)
    readme = (ROOT / "README.md").read_text()
    test_cmd = next(x for x in readme.splitlines() if x.endswith("python -m pytest -q tests"))
    assert test_cmd.startswith("pip install torch==2.13.0 && pip install ")
    assert _extras(test_cmd) == ci_extras - {"lint"}
    assert {"hf", "test", "parquet", "report"} <= _extras(test_cmd)
    assert "ruff" in " ".join(extras["lint"])
    demo_cmd = next(x for x in readme.splitlines() if x.endswith("&& spice demo"))
    assert {"hf", "report"} <= _extras(demo_cmd)


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_data_file_is_named(work, tmp_path, capsys, no_model_load):
    data = tmp_path / "locked.jsonl"
    data.write_text((work / "data.jsonl").read_text())
    data.chmod(0)
    argv = ["features", "--model", str(work / "model"), "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "f"), "--quiet"]) == 1
    assert "locked.jsonl: cannot be read (permission denied)" in capsys.readouterr().err
