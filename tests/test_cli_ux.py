"""The command line as a careful user meets it: help and defaults, --version, whole error
messages, option values checked before any work, outputs that appear only when a run succeeds,
a demo that can be rerun, a store that is checked before it is trusted, content-based data
identity."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from spice.cli import build_parser, main

from helpers import argv

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny saved model, 60 records and a feature store made from them."""
    from spice import toy

    d = tmp_path_factory.mktemp("ux")
    data = toy.make_instruction_data(60, seed=5)
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    tok = toy.train_tokenizer([r["instruction"] + r["input"] + r["output"] for r in data], 300)
    model = toy.tiny_llama(len(tok), seed=1)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    rc = main(
        argv(
            "features",
            "--quiet",
            model=d / "model",
            data=d / "data.jsonl",
            out=d / "store",
            dim=64,
            max_length=48,
        )
    )
    assert rc == 0
    return d


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_and_shows_its_default(capsys):
    for name, sp in _subparsers().items():
        for a in sp._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"spice {name} {a.option_strings or a.dest} has no help"
        with pytest.raises(SystemExit):
            sp.parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        for a in sp._actions:
            shown = a.default not in (None, False, argparse.SUPPRESS) and not a.required
            if shown and a.option_strings:
                assert f"(default: {a.default})" in text, (name, a.option_strings)


def test_version(capsys):
    import spice

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"spice-select {spice.__version__}"


@pytest.mark.parametrize(
    "bad, needle",
    [
        (["features", "--dim", "0"], "argument --dim: 0 is out of range [1, inf]"),
        (["features", "--dim", "-5"], "argument --dim: -5 is out of range"),
        (["features", "--max-length", "0"], "argument --max-length: 0 is out of range [2, inf]"),
        (["features", "--batch-size", "0"], "argument --batch-size"),
        (
            ["features", "--max-batch-tokens", "x"],
            "argument --max-batch-tokens: 'x' is not an integer",
        ),
        (["features", "--chunk-rows", "0"], "argument --chunk-rows"),
        (["features", "--checkpoint-seconds", "0"], "argument --checkpoint-seconds"),
        (["features", "--lora-r", "-1"], "argument --lora-r"),
        (["select", "--fraction", "0"], "argument --fraction: 0 is out of range (0, 1]"),
        (["select", "--fraction", "1.5"], "argument --fraction"),
        (["select", "--k", "0"], "argument --k"),
        (["select", "--alpha", "inf"], "argument --alpha: 'inf' is not finite"),
        (["select", "--alpha", "0"], "argument --alpha"),
        (["select", "--penalty", "-0.1"], "argument --penalty"),
        (["select", "--early-stop", "1"], "argument --early-stop"),
        (["online", "--pool-size", "0"], "argument --pool-size"),
        (["online", "--lr", "nan"], "argument --lr"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(capsys, bad, needle):
    base = {
        "features": ["--model", "m", "--data", "d", "--out", "o"],
        "select": ["--features", "f", "--data", "d", "--out", "o"],
        "online": ["--model", "m", "--data", "d", "--out", "o"],
    }[bad[0]]
    with pytest.raises(SystemExit) as e:
        main([bad[0], *base, *bad[1:]])
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_multi_line_errors_are_printed_whole(work, capsys):
    rc = main(
        argv(
            "features",
            "--quiet",
            model=work / "model",
            data=work / "data.jsonl",
            out=work / "store",
            dim=32,
            max_length=48,
        )
    )
    err = capsys.readouterr().err
    err = err[err.index("spice: error:") :]
    assert rc == 1 and err.startswith("spice: error: feature store")
    assert "Differences (store -> requested):" in err
    assert "\n  dim: 64 -> 32\n" in err and err.rstrip().endswith("to start over.")
    assert "Traceback" not in err


def test_failed_runs_leave_no_output(work, capsys):
    sel = work / "never"
    too_many = dict(features=work / "store", data=work / "data.jsonl", k=500)
    rc = main(argv("select", **too_many, out=sel))
    assert rc == 1 and "out of range" in capsys.readouterr().err
    assert not sel.exists()
    assert not [p for p in work.iterdir() if p.name.startswith(".never")]  # no staging left
    keep = work / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    rc = main(argv("select", **too_many, out=keep))
    assert rc == 1 and [p.name for p in keep.iterdir()] == ["notes.txt"]
    empty = work / "empty.jsonl"
    empty.write_text("\n")
    rc = main(
        argv(
            "run",
            "--quiet",
            "--no-report",
            model=work / "model",
            data=empty,
            out=work / "deep" / "run-empty",
            dim=16,
        )
    )
    assert rc == 1 and "holds no records" in capsys.readouterr().err
    assert not (work / "deep").exists()
    rc = main(
        argv(
            "features",
            "--quiet",
            model=work / "model",
            data=empty,
            out=work / "features-empty",
            dim=16,
        )
    )
    assert rc == 1 and "holds no records" in capsys.readouterr().err
    assert not (work / "features-empty").exists()


def test_selection_appears_whole_and_only_on_success(work):
    out = work / "sel"
    assert (
        main(argv("select", features=work / "store", data=work / "data.jsonl", k=6, out=out)) == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "axolotl_dataset.yaml",
        "dataset_info.json",
        "indices.npy",
        "scores.csv",
        "selection.json",
        "subset.jsonl",
        "timing.json",
        "trl_sft.py",
    ]
    assert not [p for p in work.iterdir() if p.name.startswith(".sel.tmp-")]


def test_a_damaged_store_is_refused_naming_the_chunk(work, tmp_path, capsys):
    import shutil

    bad = tmp_path / "store"
    shutil.copytree(work / "store", bad)
    raw = bytearray((bad / "features.npy").read_bytes())
    raw[-7] ^= 0x10  # one bit of the last row
    (bad / "features.npy").write_bytes(bytes(raw))
    args = argv("select", features=bad, data=work / "data.jsonl", k=6)
    assert main([*args, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "is damaged: chunk 0 (rows 0 to 59) does not match its checksum" in err
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b"), "--no-verify"]) == 0


def test_data_identity_is_the_records_content(work, tmp_path):
    lines = (work / "data.jsonl").read_text().splitlines()
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(
        "\n\n".join(json.dumps(json.loads(x), indent=None, separators=(", ", " : ")) for x in lines)
        + "\n\n\n"
    )
    out = tmp_path / "sel"
    assert main(argv("select", features=work / "store", data=spaced, k=6, out=out)) == 0
    sel = json.loads((out / "selection.json").read_text())
    subset = (out / "subset.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in subset] == [json.loads(lines[i]) for i in sel["indices"]]
    changed = tmp_path / "changed.jsonl"
    changed.write_text((work / "data.jsonl").read_text().replace('"output": "', '"output": "x', 1))
    assert (
        main(argv("select", features=work / "store", data=changed, k=6, out=tmp_path / "no")) == 1
    )


@pytest.mark.slow
def test_demo_replaces_its_own_folder(tmp_path, capsys):
    from spice.demo import run_demo
    from spice.store import FeatureStore

    out = tmp_path / "demo"
    out.mkdir()  # a full demo's leftovers: 2000 records, their store, their selection
    (out / "data.jsonl").write_text('{"instruction": "a", "input": "", "output": "b"}\n' * 2000)
    (out / "features").mkdir()
    (out / "features" / "manifest.json").write_text("{}")
    (out / "selection.json").write_text(json.dumps({"indices": [1999]}))
    run_demo(out, quick=True)
    run_demo(out, quick=True)  # and again, in the same folder
    sel = json.loads((out / "selection.json").read_text())
    n = len((out / "data.jsonl").read_text().splitlines())
    assert n == 200 and max(sel["indices"]) < n and len(FeatureStore.open(out / "features")) == n
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("mine")
    rc = main(["demo", "--quick", "--out", str(other)])
    assert rc == 1 and "thesis.tex" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["thesis.tex"]
    run_demo(other, quick=True, overwrite=True)  # asked for: the demo's files join the user's
    assert (other / "thesis.tex").read_text() == "mine" and (other / "selection.json").is_file()


def test_help_states_the_library_defaults():
    """The defaults the help quotes for the extraction's settings are the library's."""
    import inspect

    from spice.features import driver
    from spice.features.config import ExtractConfig

    sig = inspect.signature(driver.extract).parameters
    text = " ".join(_subparsers()["features"].format_help().split())
    assert ExtractConfig.max_batch_tokens == driver.DEFAULT_BATCH_TOKENS
    assert f"batch_size alone) (default: {driver.DEFAULT_BATCH_TOKENS})" in text
    assert f"shared among ranks (default: {ExtractConfig.chunk_rows})" in text
    assert sig["checkpoint_seconds"].default == 60.0
    assert "save partial progress at least this often (default: 60.0)" in text


def test_debug_shows_the_traceback(work, capsys):
    args = argv(
        "select", features=work / "store", data=work / "data.jsonl", k=500, out=work / "dbg"
    )
    assert main(args) == 1
    with pytest.raises(ValueError, match="out of range"):
        main(["--debug", *args])
    assert not (work / "dbg").exists()


def test_online_that_fails_early_leaves_no_folder(work, capsys):
    out = work / "online-never"
    rc = main(argv("online", model=work / "no-model", data=work / "data.jsonl", out=out))
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_new_extraction_options_reach_extract(work, monkeypatch):
    """--max-batch-tokens and --chunk-rows reach extract in its config (ExtractConfig's defaults
    when not given), --checkpoint-seconds as its keyword."""
    import spice.features
    from spice.features import driver

    seen: list[dict] = []

    def spy(*args, **kw):
        seen.append(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(driver, "extract", spy)
    monkeypatch.setattr(spice.features, "extract", spy, raising=False)  # the lazy name's cache
    base = argv(
        "features", "--quiet", model=work / "model", data=work / "data.jsonl", out=work / "never-f"
    )
    assert main(base) == 1
    assert (
        main(
            [*base, "--max-batch-tokens", "300", "--chunk-rows", "7", "--checkpoint-seconds", "2.5"]
        )
        == 1
    )
    first, second = seen[0]["config"], seen[1]["config"]
    assert (first.max_batch_tokens, first.chunk_rows) == (512, 4096)
    assert seen[0]["checkpoint_seconds"] == 60.0
    assert (second.max_batch_tokens, second.chunk_rows, seen[1]["checkpoint_seconds"]) == (
        300,
        7,
        2.5,
    )
    assert not (work / "never-f").exists()


def test_every_name_of_spice_features_resolves():
    import spice.features as feats

    for name in feats.__all__:
        assert getattr(feats, name) is not None, name
    assert set(feats.__all__) <= set(dir(feats))
    with pytest.raises(AttributeError, match="no_such_name"):
        feats.no_such_name  # noqa: B018
