"""objective="diag-compat" on zero rows, as the authors' released loop treats them: it takes
min(k, n) rows whatever the scores, so a zero row (gain log 1 = 0, cosine 0, score 0) is picked
once every other row scores below 0 or none is left."""

from __future__ import annotations

import numpy as np
import pytest

import spice
from spice.reference import diag_compat_reference


def test_a_zero_row_beats_a_row_whose_penalty_exceeds_its_gain():
    # Row 0 first (gain log 2.44); den[0] becomes 1 + 1.2**4. Row 2 opposes row 0 (cosine
    # -1/sqrt(1.01)); its gain log(1 + 1/den[0] + 0.01) = 0.289 is below λ * 0.995.
    G = np.array([[1.2, 0.0], [0.0, 0.0], [-1.0, 0.1]])
    sel = spice.select(G, 3, conflict_penalty=1.0, objective="diag-compat")
    assert sel.indices.tolist() == [0, 1, 2]
    np.testing.assert_allclose(
        sel.gains, [np.log(2.44), 0.0, np.log(1.01 + 1 / (1 + 1.2**4))], rtol=1e-12
    )
    assert sel.scores[1] == 0.0 and sel.conflict[1] == 0.0
    assert sel.stop_reason == "budget"


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lam", [0.0, 0.5, 3.0])
def test_zero_rows_match_the_transcription(seed, lam):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((24, 5))
    G[rng.choice(24, 9, replace=False)] = 0.0
    for k in (10, 20, 24):  # a zero row is taken when the nonzero ones run out, too
        sel = spice.select(G, k, conflict_penalty=lam, objective="diag-compat")
        ref = diag_compat_reference(G, k, conflict_penalty=lam)
        np.testing.assert_array_equal(sel.indices, ref.indices)
        np.testing.assert_allclose(sel.gains, ref.gains, rtol=1e-9, atol=0)
        np.testing.assert_allclose(sel.scores, ref.scores, rtol=1e-9, atol=1e-12)
        assert len(sel) == k


def test_all_zero_rows_are_taken_in_index_order():
    G = np.zeros((6, 3), np.float32)
    sel = spice.select(G, 4, objective="diag-compat", conflict_penalty=0.1)
    assert sel.indices.tolist() == [0, 1, 2, 3] and sel.logdet == 0.0
    # early stop: a gain of 0 is at most ω times the first gain, so the run stops there
    G[3] = 1.0
    sel = spice.select(G, 4, objective="diag-compat", early_stop=0.5)
    assert sel.indices.tolist() == [3] and sel.stop_reason == "early_stop"
