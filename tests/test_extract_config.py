"""ExtractConfig: the settings of an extraction, checked once when made; extract() takes them as
keywords or as config= and writes the same bytes either way; the ``spice features`` flags are
made from its fields; stores written before (manifest key ``shard_rows``) still resume."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from spice.features.config import ExtractConfig, LoraSpec


@pytest.mark.parametrize(
    "kw, err, match",
    [
        ({"dim": 0}, ValueError, r"dim must be an integer >= 1, got 0"),
        ({"dim": True}, ValueError, r"dim must be an integer >= 1, got True"),
        ({"dim": 8.0}, ValueError, r"dim must be an integer >= 1, got 8\.0"),
        ({"projection": "random"}, ValueError,
         r"projection must be 'factorized', 'dense' or 'none', got 'random'"),
        ({"loss_on": "prompt"}, ValueError, r"loss_on must be 'response' or 'all'"),
        ({"max_length": 1}, ValueError, r"max_length must be an integer >= 2, got 1"),
        ({"batch_size": 0}, ValueError, r"batch_size must be an integer >= 1"),
        ({"max_batch_tokens": 0}, ValueError,
         r"max_batch_tokens must be an integer >= 1 or None, got 0"),
        ({"normalize": "l2"}, ValueError, r"normalize must be 'none' or 'unit', got 'l2'"),
        ({"targets": "model"}, ValueError, r"targets must be 'given' or 'sampled'"),
        ({"dtype": "bfloat16"}, ValueError, r"dtype must be 'float16' or 'float32'"),
        ({"seed": "1"}, TypeError, r"seed must be an integer, got '1'"),
        ({"seed": -1, "targets": "sampled"}, ValueError, r"seed must be >= 0 with targets="),
        ({"chunk_rows": 0}, ValueError, r"chunk_rows must be an integer >= 1, got 0"),
        ({"lora": "r=8"}, TypeError, r"lora must be a LoraSpec or None, got str"),
        ({"lora": LoraSpec(r=0)}, ValueError, r"LoraSpec\.r must be an integer >= 1, got 0"),
        ({"lora": LoraSpec(init="zeros")}, ValueError, r"LoraSpec\.init must be 'default'"),
        ({"target_modules": "q_proj"}, TypeError, r"target_modules must be a list"),
        ({"target_modules": []}, ValueError, r"target_modules must name at least one module"),
        ({"target_modules": ["q_proj", ""]}, ValueError, r"each a non-empty string"),
    ],
)  # fmt: skip
def test_a_bad_setting_is_refused_by_name(kw, err, match):
    with pytest.raises(err, match=match):
        ExtractConfig(**kw)
    # a changed copy is checked again
    with pytest.raises(err, match=match):
        dataclasses.replace(ExtractConfig(), **kw)


def test_settings_are_stored_as_checked():
    cfg = ExtractConfig(dim=np.int64(64), max_batch_tokens=None, target_modules=["q_proj"],
                        lora=None, seed=-3)  # fmt: skip
    assert type(cfg.dim) is int and cfg.dim == 64
    assert cfg.max_batch_tokens is None
    assert cfg.target_modules == ("q_proj",)  # a tuple: the config is frozen and hashable
    assert cfg.seed == -3 and cfg.sample_seed is None  # any int seeds a projection
    assert ExtractConfig(targets="sampled", seed=5).sample_seed == 5
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]


def test_every_field_has_a_help_line_in_the_docstring():
    for f in dataclasses.fields(ExtractConfig):
        help_ = f.metadata["help"]
        assert help_ and "%" not in help_  # argparse %-formats help text
        assert f"    {f.name} [{f.default!r}]" in ExtractConfig.__doc__
        assert help_ in ExtractConfig.__doc__


# ---------------------------------------------------------------------------------------------
# the command line: the feature flags are made from ExtractConfig's fields


def _parsers():
    from spice.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.choices and "features" in a.choices)
    return {name: sub.choices[name] for name in ("features", "run")}


@pytest.mark.parametrize("command", ["features", "run"])
def test_cli_flags_are_the_config_fields(command):
    parser = _parsers()[command]
    by_flag = {s: a for a in parser._actions for s in a.option_strings}
    flagged = [f for f in dataclasses.fields(ExtractConfig) if f.metadata["flag"]]
    assert [f.metadata["flag"] for f in flagged] == [
        "--dim",
        "--projection",
        "--loss-on",
        "--max-length",
        "--batch-size",
        "--max-batch-tokens",
        "--targets",
        "--dtype",
        "--chunk-rows",
    ]  # fmt: skip  (every flag the command had, under its old name)
    for f in flagged:
        a = by_flag[f.metadata["flag"]]
        assert a.dest == f.name and a.default == f.default and a.help == f.metadata["help"]
        want = list(f.metadata["choices"]) if f.metadata["choices"] else None
        assert a.choices == want
    if command == "features":  # settings without a flag of their own (--seed is shared)
        for name in ("--normalize", "--lora", "--target-modules", "--shard-rows"):
            assert name not in by_flag


def test_cli_defaults_make_the_default_config():
    """No flags: the config the command passes to extract() is ExtractConfig() itself."""
    from spice.cli import _extract_config

    args = _parsers()["features"].parse_args(["--model", "m", "--data", "d", "--out", "o"])
    assert _extract_config(args) == ExtractConfig()
    args = _parsers()["features"].parse_args([
        "--model", "m", "--data", "d", "--out", "o", "--dim", "64", "--projection", "dense",
        "--loss-on", "all", "--max-length", "2", "--batch-size", "3", "--max-batch-tokens", "99",
        "--targets", "sampled", "--dtype", "float32", "--chunk-rows", "7", "--seed", "5",
        "--lora-r", "0",
    ])  # fmt: skip
    assert _extract_config(args) == ExtractConfig(
        dim=64, projection="dense", loss_on="all", max_length=2, batch_size=3,
        max_batch_tokens=99, targets="sampled", dtype="float32", chunk_rows=7, seed=5, lora=None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dim", "0"], "argument --dim: 0 is out of range [1, inf]"),
        (["--max-length", "1"], "argument --max-length: 1 is out of range [2, inf]"),
        (["--max-batch-tokens", "x"], "argument --max-batch-tokens: 'x' is not an integer"),
        (["--chunk-rows", "0"], "argument --chunk-rows: 0 is out of range [1, inf]"),
        (["--dtype", "bfloat16"], "argument --dtype: invalid choice: 'bfloat16'"),
    ],
)
def test_cli_refuses_a_bad_flag_with_its_range(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        _parsers()["features"].parse_args(["--model", "m", "--data", "d", "--out", "o", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# extract(): keywords or config=, the same bytes; stores written before resume


def _torch():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import features_fixtures

    return features_fixtures


def files(path):
    names = ("features.npy", "index.jsonl", "manifest.json", "skipped.jsonl")
    return {n: (path / n).read_bytes() for n in names if (path / n).exists()}


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer, data file) for the extractions below, with one torch thread."""
    ff = _torch()
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ff.build_llama(), ff._train_tokenizer(chat=True)
    torch.set_num_threads(n)


@pytest.fixture
def data(tmp_path):
    import json

    ff = _torch()
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ff.make_records(13, seed=4)))
    return p


CASES = {
    "given": dict(dim=96, lora=LoraSpec(r=4), batch_size=3, max_batch_tokens=None, chunk_rows=5),
    "sampled": dict(dim=64, projection="dense", lora=None, target_modules=["q_proj", "v_proj"],
                    loss_on="all", max_length=32, normalize="unit", dtype="float32",
                    targets="sampled", seed=7, chunk_rows=4, max_batch_tokens=80),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_keywords_and_config_write_the_same_bytes(tiny, data, tmp_path, case):
    from spice.features import extract

    model, tok = tiny
    kw = CASES[case]
    a = extract(model, tok, data, tmp_path / "kw", progress=False, **kw)
    b = extract(model, tok, data, tmp_path / "cfg", progress=False, config=ExtractConfig(**kw))
    assert files(a.path) == files(b.path) and len(files(a.path)["features.npy"]) > 0
    old = {k: v for k, v in kw.items() if k != "chunk_rows"}
    with pytest.warns(DeprecationWarning, match="shard_rows"):
        c = extract(model, tok, data, tmp_path / "old", progress=False, shard_rows=kw["chunk_rows"],
                    **old)  # fmt: skip
    assert files(c.path) == files(a.path)


def test_config_and_a_setting_keyword_are_refused_together(tiny, data, tmp_path):
    from spice.features import extract

    model, tok = tiny
    cfg = ExtractConfig(dim=64)
    for kw, match in [
        ({"dim": 8192}, r"config= and also dim"),  # even the default value
        ({"seed": 1, "max_length": 64}, r"config= and also max_length, seed"),
        ({"shard_rows": 5}, r"config= and also chunk_rows"),
    ]:
        with pytest.raises(TypeError, match=match), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            extract(model, tok, data, tmp_path / "s", config=cfg, **kw)
    with pytest.raises(TypeError, match="config must be an ExtractConfig, got dict"):
        extract(model, tok, data, tmp_path / "s", config={"dim": 64})
    with (
        pytest.raises(TypeError, match="chunk_rows and shard_rows"),
        pytest.warns(DeprecationWarning),
    ):
        extract(model, tok, data, tmp_path / "s", chunk_rows=4, shard_rows=4)
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got 0"):
        extract(model, tok, data, tmp_path / "s", dim=0)
    assert not (tmp_path / "s").exists()  # refused before any work


# the top-level keys of a store manifest as stores written before ExtractConfig have them: an
# unfinished store with these keys (``shard_rows``, not ``chunk_rows``) must go on resuming
OLD_MANIFEST_KEYS = [
    "compute", "config", "data_read", "dim", "dtype", "format", "format_version", "library",
    "my_chunks", "part", "shard_rows", "status", "total_rows",
]  # fmt: skip


def test_an_unfinished_store_of_the_old_layout_resumes(tiny, data, tmp_path, monkeypatch):
    import json

    import spice.features.chunks as ex
    from spice.features import extract

    model, tok = tiny
    kw = CASES["given"]
    reference = extract(model, tok, data, tmp_path / "ref", progress=False, **kw)
    real, calls = ex.batch_features, [0]

    def crashing(*a, **k):  # the 4th batch: chunk 0 finished, chunk 1 half saved
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ex, "batch_features", crashing)
    out = tmp_path / "s"
    old = {k: v for k, v in kw.items() if k != "chunk_rows"}
    with pytest.raises(KeyboardInterrupt), pytest.warns(DeprecationWarning):
        extract(model, tok, data, out, progress=False, checkpoint_seconds=1e-9,
                shard_rows=kw["chunk_rows"], **old)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest) == OLD_MANIFEST_KEYS and manifest["shard_rows"] == 5
    assert (out / "shards" / "chunk-00001.partial.json").exists()
    monkeypatch.setattr(ex, "batch_features", real)
    store = extract(model, tok, data, out, progress=False, config=ExtractConfig(**kw))
    assert files(store.path) == files(reference.path)
