"""ExtractConfig: the settings of an extraction, checked once when made; extract() takes them as
keywords or as config= and writes the same bytes either way; the ``spice features`` flags are
made from its fields; stores written before (manifest key ``shard_rows``) still resume."""

from __future__ import annotations

import dataclasses

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
