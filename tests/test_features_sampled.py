"""Sampled-target features (``targets="sampled"``) against exact enumeration of the vocabulary.

With one loss position, the sampled feature of a sequence is g_y, the gradient of
−log p(y | context) for a token y drawn from the model's own distribution p. Enumerating every y
gives the exact per-sample Fisher F = Σ_y p(y) g_y g_yᵀ; the sampled features must be rows of that
enumeration, drawn with the model's probabilities, and their mean outer product must approach F.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spice.features import LoraSpec, extract, make_projector
from spice.features.driver import prepared_model, target_uniforms
from spice.features.hooks import GradientCollector, batch_features, forward_logits
from spice.features.projection import LayerSpec

pytest_plugins = ["features_fixtures"]
pytestmark = pytest.mark.usefixtures("torch_one_thread")

LORA = LoraSpec(r=4, init="random", seed=1)


def _sequence(tok, text="add two numbers 3 + 4 ="):
    ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
    T = ids.numel()
    lm = torch.zeros(T, dtype=torch.bool)
    lm[T - 1] = True  # one loss position: the last token, predicted from everything before it
    return ids, lm


def _run(model, ids, lm, labels=None, uniforms=None):
    """Features, losses and the model's log-probabilities at the loss position for a batch."""
    B = ids.shape[0]
    am = torch.ones_like(ids)
    with prepared_model(model, LORA) as (m, modules, _):
        layers = [LayerSpec(n, mod.in_features, mod.out_features) for n, mod in modules]
        col = GradientCollector(modules, make_projector("factorized", layers, 96))
        with col.attached():
            f, loss, _ = batch_features(m, col, ids, am, lm, labels=labels, uniforms=uniforms)
        with torch.no_grad():
            logits = forward_logits(m, ids[:1], am[:1])[0, -2].double()
    assert f.shape[0] == B
    return f.double().numpy(), loss.numpy(), torch.log_softmax(logits, -1).numpy()


@pytest.fixture(scope="module")
def peaked_llama():
    """The tiny Llama with a sharper LM head, so p is far from uniform and the test has power."""
    from features_fixtures import build_llama

    m = build_llama(seed=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(40.0)
    return m


def test_sampled_features_are_exact_fisher_samples(peaked_llama, tokenizer):
    ids1, lm1 = _sequence(tokenizer)
    V = peaked_llama.config.vocab_size
    T = ids1.numel()
    # every label at the loss position: g_y for all y, and log p(y)
    ids = ids1.repeat(V, 1)
    labels = ids.clone()
    labels[:, T - 1] = torch.arange(V)
    g_all, loss_all, logp = _run(peaked_llama, ids, lm1.repeat(V, 1), labels=labels)
    p = np.exp(logp)
    np.testing.assert_allclose(loss_all, -logp, rtol=1e-4, atol=1e-5)
    assert p.max() < 0.9 and np.sort(p)[-5:].sum() > 0.5  # peaked but not degenerate
    F = (g_all * p[:, None]).T @ g_all

    N = 2500
    u = torch.from_numpy(np.random.default_rng(7).random((N, T)))
    f, loss, _ = _run(peaked_llama, ids1.repeat(N, 1), lm1.repeat(N, 1), uniforms=u)
    # the token each uniform draws, by an independent inverse CDF of the model's distribution
    cdf = np.cumsum(p)
    y = np.minimum(np.searchsorted(cdf, u[:, T - 1].numpy() * cdf[-1], side="right"), V - 1)
    scale = np.abs(g_all).max()
    assert np.abs(f - g_all[y]).max() <= 1e-4 * scale  # each row is g_y of its own draw
    # the reported loss is the given token's, not the sampled one's
    np.testing.assert_allclose(loss, -logp[ids1[T - 1]], rtol=1e-4)

    def rel(A):
        return np.linalg.norm(A - F) / np.linalg.norm(F)

    F_hat = f.T @ f / N
    assert rel(F_hat) < 0.15
    # controls the test can tell apart: the given label's gradient, and the most likely token's
    g_given = g_all[ids1[T - 1]]
    g_top = g_all[int(np.argmax(p))]
    assert rel(np.outer(g_given, g_given)) > 0.5
    assert rel(np.outer(g_top, g_top)) > 0.5


def test_right_and_wrong_answer_give_the_same_sampled_feature(tiny_llama, tokenizer):
    """Same context, different given answer token: the given-label features differ, the sampled
    ones are the same draw (the label is never read)."""
    ids1, lm1 = _sequence(tokenizer)
    T = ids1.numel()
    ids = ids1.repeat(2, 1)
    wrong = (int(ids1[T - 1]) + 17) % tiny_llama.config.vocab_size
    ids[1, T - 1] = wrong
    lm = lm1.repeat(2, 1)
    given, _, _ = _run(tiny_llama, ids, lm)
    assert np.abs(given[0] - given[1]).max() > 1e-3 * np.abs(given).max()
    u = torch.from_numpy(np.random.default_rng(1).random((1, T))).repeat(2, 1)
    sampled, _, _ = _run(tiny_llama, ids, lm, uniforms=u)
    # equal up to float32 round-off (two rows of a batch do not share every reduction order)
    assert np.abs(sampled[0] - sampled[1]).max() <= 1e-5 * np.abs(sampled).max()


def _extract(model, tok, recs, path, **kw):
    kw = {"dim": 96, "lora": LORA, "dtype": "float32", "progress": False, **kw}
    return extract(model, tok, recs, path, **kw)


def test_extract_sampled_is_seeded_and_batch_independent(tmp_path, tiny_llama, tokenizer, records):
    recs = records[:10]
    a = _extract(tiny_llama, tokenizer, recs, tmp_path / "a", targets="sampled", batch_size=1)
    b = _extract(tiny_llama, tokenizer, recs, tmp_path / "b", targets="sampled", batch_size=7)
    c = _extract(tiny_llama, tokenizer, recs, tmp_path / "c", targets="sampled", seed=1)
    g = _extract(tiny_llama, tokenizer, recs, tmp_path / "g")
    A, B, C, G = (np.array(s.features) for s in (a, b, c, g))
    scale = np.abs(A).max()
    assert np.abs(A - B).max() <= 1e-4 * scale  # the draw belongs to the row, not the batch
    assert np.abs(A - C).max() > 1e-2 * scale  # another seed, other draws
    assert np.abs(A - G).max() > 1e-2 * scale  # not the given labels' gradients
    # the index keeps the given response's loss
    np.testing.assert_allclose(a.index.loss, g.index.loss, rtol=1e-4)
    assert a.manifest["config"]["targets"] == {"kind": "sampled", "seed": 0}
    assert "targets" not in g.manifest["config"]
    # a store made with given targets is not resumed as a sampled one
    with pytest.raises(Exception, match="(?i)targets|config"):
        _extract(tiny_llama, tokenizer, recs, tmp_path / "g", targets="sampled")


def test_target_uniforms_depend_on_seed_and_row_only():
    np.testing.assert_array_equal(target_uniforms(3, 10, 5), target_uniforms(3, 10, 8)[:5])
    assert not np.array_equal(target_uniforms(3, 10, 5), target_uniforms(3, 11, 5))
    assert not np.array_equal(target_uniforms(3, 10, 5), target_uniforms(4, 10, 5))


def test_bad_targets_refused(tmp_path, tiny_llama, tokenizer, records):
    with pytest.raises(ValueError, match="targets must be 'given' or 'sampled'"):
        _extract(tiny_llama, tokenizer, records[:2], tmp_path / "x", targets="model")
