"""Features do not depend on padding, batch size, batch order; response-only masking holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spice.features import LoraSpec, extract, load_records, make_projector, tokenize_record
from spice.features.driver import prepared_model
from spice.features.hooks import GradientCollector, batch_features
from spice.features.projection import LayerSpec

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

LORA = LoraSpec(r=4, init="random", seed=1)


def run(model, tok, recs, path, **kw):
    kw = {"dim": 192, "lora": LORA, "dtype": "float32", "progress": False, **kw}
    return np.array(extract(model, tok, recs, path, **kw).features)


def close_rows(a, b, rtol=1e-4):
    scale = np.abs(b).max(axis=1, keepdims=True) + 1e-30
    assert (np.abs(a - b) / scale).max() <= rtol


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llama, tokenizer, records):
    """Reference: batch size 1 (no padding at all)."""
    return run(tiny_llama, tokenizer, records, tmp_path_factory.mktemp("b") / "s", batch_size=1)


@pytest.mark.parametrize("batch_size", [2, 5, 24])
def test_batch_size_and_padding(tmp_path, tiny_llama, tokenizer, records, base, batch_size):
    got = run(tiny_llama, tokenizer, records, tmp_path / "s", batch_size=batch_size)
    close_rows(got, base)


def test_batch_order(tmp_path, tiny_llama, tokenizer, records, base):
    perm = np.random.default_rng(0).permutation(len(records))
    got = run(tiny_llama, tokenizer, [records[i] for i in perm], tmp_path / "s", batch_size=5)
    close_rows(got, base[perm])


def test_max_batch_tokens(tmp_path, tiny_llama, tokenizer, records, base):
    got = run(tiny_llama, tokenizer, records, tmp_path / "s", batch_size=8, max_batch_tokens=120)
    close_rows(got, base)


def test_left_and_right_neighbours_do_not_leak(tmp_path, tiny_llama, tokenizer, records, base):
    """A short record batched with very long ones keeps its feature (heavy padding)."""
    long = {"id": "long", "prompt": "step by step " * 40, "response": "the answer " * 20}
    recs = [long, records[1], long, records[5]]
    got = run(tiny_llama, tokenizer, recs, tmp_path / "s", batch_size=4)
    close_rows(got[[1, 3]], base[[1, 5]])


def _batch(tok, recs, loss_on="response"):
    toks = [tokenize_record(r, tok, loss_on=loss_on) for r in load_records(recs)]
    T = max(len(t.input_ids) for t in toks)
    ids = torch.zeros(len(toks), T, dtype=torch.long)
    am = torch.zeros_like(ids)
    lm = torch.zeros(len(toks), T, dtype=torch.bool)
    for k, t in enumerate(toks):
        n = len(t.input_ids)
        ids[k, :n] = torch.from_numpy(t.input_ids)
        am[k, :n] = 1
        lm[k, :n] = torch.from_numpy(t.loss_mask)
    return ids, am, lm


def _features(model, ids, am, lm, labels):
    with prepared_model(model, LORA) as (m, modules, _):
        layers = [LayerSpec(n, mod.in_features, mod.out_features) for n, mod in modules]
        col = GradientCollector(modules, make_projector("factorized", layers, 128))
        with col.attached():
            f, _, _ = batch_features(m, col, ids, am, lm, labels=labels)
    return f.numpy()


def test_response_only_masking(tiny_llama, tokenizer, records):
    ids, am, lm = _batch(tokenizer, records[:6])
    f0 = _features(tiny_llama, ids, am, lm, ids)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(3, 300, ids.shape, generator=g)
    prompt = am.bool() & ~lm
    assert prompt.any() and lm.any()
    # changing the labels of prompt tokens changes nothing ...
    f1 = _features(tiny_llama, ids, am, lm, torch.where(prompt, noise, ids))
    np.testing.assert_array_equal(f1, f0)
    # ... changing those of response tokens does, and so does counting prompt tokens in the loss
    f2 = _features(tiny_llama, ids, am, lm, torch.where(lm, noise, ids))
    assert np.abs(f2 - f0).max() > 1e-3 * np.abs(f0).max()
    lm_all = am.bool().clone()
    lm_all[:, 0] = False
    f3 = _features(tiny_llama, ids, am, lm_all, torch.where(prompt, noise, ids))
    f4 = _features(tiny_llama, ids, am, lm_all, ids)
    assert np.abs(f3 - f4).max() > 1e-3 * np.abs(f4).max()


def test_loss_on_all_differs_from_response(tmp_path, tiny_llama, tokenizer, records, base):
    got = run(tiny_llama, tokenizer, records, tmp_path / "s", batch_size=6, loss_on="all")
    assert np.abs(got - base).max() > 1e-3 * np.abs(base).max()


def test_truncation_keeps_the_response_and_skips_empty_ones(
    tmp_path, tiny_llama, tokenizer, records, base, capsys
):
    long = {"id": "too-long", "prompt": "write a function " * 80, "response": "ok"}
    empty = {"id": "empty", "prompt": "hello", "response": ""}
    recs = [records[0], long, records[1], empty]
    store = extract(
        tiny_llama, tokenizer, recs, tmp_path / "s", dim=192, lora=LORA, dtype="float32",
        max_length=160, batch_size=4, progress=True,
    )  # fmt: skip
    f = np.array(store.features)
    assert f[1].any() and not f[3].any()
    close_rows(f[[0, 2]], base[[0, 1]])
    idx = store.index
    assert list(idx.skipped()) == [3] and list(idx.flagged("empty_response")) == [3]
    assert idx.flags[1] == ("prompt_truncated", "truncated") and idx.tokens[1] == 160
    # the response survives the cut: "ok" and EOS are its loss tokens, as without truncation
    want = tokenize_record(load_records([long])[0], tokenizer, max_length=4096).n_loss_tokens
    assert idx.loss_tokens[1] == want and np.isfinite(idx.loss[1])
    assert np.isnan(idx.loss[3]) and idx.loss_tokens[3] == 0
    assert store.manifest["skipped"]["reasons"] == {"empty_response": 1}
    err = capsys.readouterr().err
    assert "1 skipped with a zero row (1 empty_response" in err
    assert "1 truncated to max_length=160 (1 prompt truncated)" in err


def test_unit_normalisation(tmp_path, tiny_llama, tokenizer, records, base):
    got = run(tiny_llama, tokenizer, records, tmp_path / "s", batch_size=6, normalize="unit")
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    close_rows(got, base / np.linalg.norm(base, axis=1, keepdims=True))


def test_float16_store(tmp_path, tiny_llama, tokenizer, records, base):
    store = extract(
        tiny_llama, tokenizer, records, tmp_path / "s", dim=192, lora=LORA, batch_size=6,
        progress=False,
    )  # fmt: skip
    assert store.features.dtype == np.float16 and isinstance(store.features, np.memmap)
    close_rows(store.features.astype(np.float32), base, rtol=2e-3)


def test_lm_head_runs_only_where_the_loss_is(tmp_path, tiny_llama, tokenizer, records):
    """The vocabulary projection sees only positions whose next token is a loss target."""
    seen = []
    h = tiny_llama.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        store = extract(
            tiny_llama,
            tokenizer,
            records[:6],
            tmp_path / "s",
            dim=64,
            lora=LORA,
            batch_size=1,
            progress=False,
        )
    finally:
        h.remove()
    assert len(seen) == 6
    assert sorted(seen) == sorted(int(n) for n in store.index.loss_tokens)
    assert sum(seen) < int(store.index.tokens.sum())
