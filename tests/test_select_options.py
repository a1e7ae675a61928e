"""SelectOptions and Constraints: the settings and side constraints of spice.select as objects,
checked once when made, giving the same picks as the keywords they replace."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spice
from spice import Constraints, SelectOptions, _core
from spice.constraints import guarantee
from spice.options import setting_names


def gaussian(seed: int, n: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize(
    "kw, exc, needle",
    [
        (dict(alpha=0.0), ValueError, "alpha = 0.0 must be a finite number > 0"),
        (dict(alpha=math.nan), ValueError, "alpha = nan must be a finite number > 0"),
        (dict(alpha="1"), TypeError, "alpha must be a number, got str"),
        (dict(conflict_penalty=-0.1), ValueError, "conflict_penalty = -0.1 must be a finite"),
        (dict(conflict_penalty=True), TypeError, "conflict_penalty must be a number, got bool"),
        (dict(early_stop=1.0), ValueError, "early_stop = 1.0 must be a number in (0, 1)"),
        (dict(early_stop=0), ValueError, "early_stop = 0.0 must be a number in (0, 1)"),
        (
            dict(method="greedy"),
            ValueError,
            "method must be one of ['lazy', 'naive', 'stochastic']",
        ),
        (dict(objective="fisher"), ValueError, "objective must be one of"),
        (dict(stochastic_eps=1.0), ValueError, "stochastic_eps = 1.0 must be a number in (0, 1)"),
        (dict(seed=1.5), TypeError, "seed must be an int, got float"),
        (dict(seed=True), TypeError, "seed must be an int, got bool"),
        (dict(threads=0), ValueError, "threads must be a positive int or None, got 0"),
        (dict(threads=2.0), ValueError, "threads must be a positive int or None, got 2.0"),
        (dict(normalize="Unit"), ValueError, "normalize must be one of ['none', 'unit']"),
        (
            dict(normalize="unit", objective="diag-compat"),
            ValueError,
            "normalize='unit' needs objective='logdet'",
        ),
        (dict(normalize="unit", alpha=1e13), ValueError, "with normalize='unit' must be <="),
        (dict(bf16=1), TypeError, "bf16 must be True or False, got int"),
        (dict(spill_dir=3), TypeError, "spill_dir must be a path or None, got int"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(kw, exc, needle):
    with pytest.raises(exc) as e:
        SelectOptions(**kw)
    assert needle in str(e.value)
    # the keywords of select are checked by the same code, with the same words
    with pytest.raises(exc) as e2:
        spice.select(gaussian(0, 10, 3), 2, **kw)
    assert str(e2.value) == str(e.value)


def test_checked_values_are_stored_as_plain_python_values(tmp_path):
    o = SelectOptions(
        alpha=np.float32(2.0),
        conflict_penalty=1,
        early_stop=np.float64(0.25),
        seed=np.int64(-1),
        threads=np.int32(2),
        bf16=np.bool_(True),
        spill_dir=tmp_path,
    )
    assert type(o.alpha) is float and o.alpha == 2.0
    assert type(o.conflict_penalty) is float and type(o.early_stop) is float
    assert o.seed == -1 and o.seed64 == 2**64 - 1
    assert type(o.threads) is int and o.bf16 is True and o.spill_dir == str(tmp_path)
    assert SelectOptions().core_early_stop == 0.0 and o.core_early_stop == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.alpha = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="alpha = -1.0"):
        dataclasses.replace(o, alpha=-1.0)  # a changed copy is checked again


def test_defaults_are_select_defaults():
    """SelectOptions() and select's keywords left out are the same run (the documented
    defaults), and the fields' help has one line each."""
    o = SelectOptions()
    assert (o.alpha, o.conflict_penalty, o.early_stop, o.method, o.seed) == (
        1.0,
        0.1,
        None,
        "lazy",
        0,
    )
    assert (o.threads, o.objective, o.stochastic_eps, o.normalize) == (None, "logdet", 0.01, "none")
    assert (o.bf16, o.spill_dir) == (False, None)
    for f in dataclasses.fields(SelectOptions):
        assert f.metadata["help"] and "\n" not in f.metadata["help"], f.name
        assert f"    {f.name} [" in SelectOptions.__doc__
    G = gaussian(1, 120, 8)
    a, b = spice.select(G, 20), spice.select(G, 20, options=o)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.params == b.params


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    alpha=st.sampled_from([0.3, 1.0, 5.0]),
    penalty=st.sampled_from([0.0, 0.1, 1.0]),
    early=st.sampled_from([None, 0.3]),
    method=st.sampled_from(["lazy", "naive", "stochastic"]),
    normalize=st.sampled_from(["none", "unit"]),
)
def test_keywords_and_options_give_identical_picks(seed, alpha, penalty, early, method, normalize):
    G = gaussian(seed, 80, 6)
    kw = dict(
        alpha=alpha,
        conflict_penalty=penalty,
        early_stop=early,
        method=method,
        seed=seed,
        normalize=normalize,
        threads=1,
    )
    a = spice.select(G, 15, **kw)
    b = spice.select(G, 15, options=SelectOptions(**kw))
    for name in ("indices", "gains", "scores", "align", "base"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.logdet, a.stop_reason, a.params) == (b.logdet, b.stop_reason, b.params)


def test_keywords_and_constraints_give_identical_picks():
    rng = np.random.default_rng(7)
    G = gaussian(7, 150, 8)
    cost = rng.integers(1, 30, 150).astype(float)
    groups = rng.integers(0, 3, 150)
    quotas = {0: 4, 1: 0.2, 2: 100}
    kw = dict(budget=200.0, cost=cost, groups=groups, quotas=quotas)
    a = spice.select(G, 30, conflict_penalty=0.0, **kw)
    b = spice.select(
        G, 30, options=SelectOptions(conflict_penalty=0.0), constraints=Constraints(**kw)
    )
    np.testing.assert_array_equal(a.indices, b.indices)
    assert (a.tokens, a.group_counts, a.guarantee_note) == (
        b.tokens,
        b.group_counts,
        b.guarantee_note,
    )
    assert a.group_counts[0] <= 4 and a.group_counts[1] <= 6 and a.tokens <= 200.0


def test_mixing_an_object_and_its_keywords_is_refused():
    G = gaussian(2, 30, 4)
    # an explicit keyword equal to the default is still a second source of the setting
    with pytest.raises(TypeError, match=r"got options= and the setting\(s\) alpha, seed"):
        spice.select(G, 5, alpha=1.0, seed=0, options=SelectOptions())
    with pytest.raises(TypeError, match="got constraints= and groups, quotas as keywords"):
        spice.select(G, 5, groups=np.zeros(30, int), quotas={0: 2}, constraints=Constraints())
    with pytest.raises(TypeError, match="options must be a spice.SelectOptions, got dict"):
        spice.select(G, 5, options={"alpha": 1.0})
    with pytest.raises(TypeError, match="constraints must be a spice.Constraints, got tuple"):
        spice.select(G, 5, constraints=(None, None))


@pytest.mark.parametrize(
    "kw, exc, needle",
    [
        (dict(budget=10.0), ValueError, "budget and cost go together"),
        (dict(cost=[1.0]), ValueError, "budget and cost go together"),
        (dict(groups=[0]), ValueError, "groups and quotas go together"),
        (dict(quotas={0: 1}), ValueError, "groups and quotas go together"),
        (dict(budget="10", cost=[1.0]), TypeError, "budget must be a number, got str"),
        (dict(budget=-1, cost=[1.0]), ValueError, "budget = -1.0 must be a finite number > 0"),
        (dict(budget=math.inf, cost=[1.0]), ValueError, "budget = inf must be a finite"),
    ],
)
def test_constraints_refuse_what_needs_no_rows_when_made(kw, exc, needle):
    with pytest.raises(exc, match=needle):
        Constraints(**kw)


def test_constraints_check_the_rows_when_the_selection_runs():
    c = Constraints(budget=5.0, cost=[1.0, 2.0, -1.0])
    with pytest.raises(ValueError, match="cost of row 2 is -1.0"):
        c.for_rows(3, 3)
    with pytest.raises(ValueError, match="cost must be 4 numbers"):
        c.for_rows(4, 4)
    q = Constraints(groups=["a", "b", "a"], quotas={"a": 0.5})
    core = q.for_rows(3, 2)
    assert core.quotas.tolist() == [1, 2] and core.labels.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="a share of k needs k"):
        q.for_rows(3, 3, k_given=False)
    assert not Constraints().active and q.active


def test_guarantee_takes_either_constraints_and_only_the_public_names():
    """The public Constraints and the checked one state the same guarantee; the former keywords
    lam/omega are gone (a TypeError, not a silent default)."""
    core = Constraints(groups=[0, 1], quotas={0: 1}).for_rows(2, 2)
    kw = dict(objective="logdet", method="lazy", stop="budget", capped=False)
    assert guarantee(Constraints(), conflict_penalty=0.0, **kw)[0] == pytest.approx(1 - 1 / math.e)
    assert guarantee(core, conflict_penalty=0.0, **kw)[0] == 0.5
    assert math.isnan(guarantee(core, conflict_penalty=0.5, **kw)[0])
    early = guarantee(core, conflict_penalty=0.0, early_stop=0.3, **kw)
    assert math.isnan(early[0]) and "early stop" in early[1]
    for former in ("lam", "omega"):
        with pytest.raises(TypeError):
            guarantee(core, **{former: 0.5}, **kw)


def test_the_core_options_take_the_public_names():
    """The binding's keywords are the public vocabulary, read back under the same names; the
    former lam/omega are refused."""
    o = _core.Options(k=4, conflict_penalty=0.5, early_stop=0.25)
    assert (o.conflict_penalty, o.early_stop) == (0.5, 0.25)
    for former in ("lam", "omega"):
        with pytest.raises(TypeError):
            _core.Options(k=4, **{former: 0.5})


def test_every_setting_has_a_select_keyword():
    import inspect

    params = inspect.signature(spice.select).parameters
    for name in setting_names():
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
