"""The pre-registered evidence harness (bench/quality/evidence.py): its universe against exact
expectations, its decision rule on constructed outcomes (it must say yes when an arm is better in
every pool, no otherwise), and an end-to-end --quick run (tiny config model) that must write every
stage and skip them when rerun. Checks structure and the rule, never who wins on real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "quality"))

pytest.importorskip("scipy")
E = pytest.importorskip("evidence_data")


def _chat(n):
    return [(f"s{i}_0", f"Can you tell me about topic {i} please?", f"Sure, topic {i} is a fine "
             "topic with many things to say about it.") for i in range(n)]  # fmt: skip


def _other(n):
    return [(f"o{i}_0", f"Bonjour, question {i} ?", f"Bien sûr, voici la réponse {i}.")
            for i in range(n)]  # fmt: skip


def test_universe_has_the_configured_defects_and_disjoint_held_out():
    U = E.make_universe(320, seed=3, sharegpt=(_chat(200), _other(20)))
    assert len(U.rows) == 320
    count = {d: sum(r.defect == d for r in U.rows) for d in E.DEFECTS}
    assert count == {"clean": 224, "wrong": 32, "misaligned": 16, "truncated": 19, "offlang": 13,
                     "dup": 16}  # fmt: skip
    # wrong answers only on verifiable rows, and each is wrong
    for r in U.rows:
        if r.defect == "wrong":
            assert r.group in E.FAMILIES
    keys = {r.key for r in U.rows}
    for g, rows in U.test.items():
        assert not keys & {r.key for r in rows}, g
    for f in E.FAMILIES:
        assert len(U.test[f]) == 15
        for gold, bad in zip(U.test[f], U.test_wrong[f]):
            assert gold.user == bad.user and gold.answer != bad.answer
    # deterministic
    V = E.make_universe(320, seed=3, sharegpt=(_chat(200), _other(20)))
    assert [(r.user, r.answer, r.defect) for r in U.rows] == [
        (r.user, r.answer, r.defect) for r in V.rows
    ]


def test_wrong_answers_are_plausible():
    import random

    rng = random.Random(0)
    import real_data as D

    for f in E.FAMILIES:
        for _ in range(50):
            r = D.make_row(f, rng)
            item = E.Item(r.user, r.answer, f, r.key)
            w = E.wrong_answer(item, rng)
            assert w != r.answer
            if f == "add":
                assert abs(int(w) - int(r.answer)) in (1, 10)
            if f == "sort":
                assert sorted(w.split(", ")) == sorted(r.answer.split(", "))
            if f == "upper":
                assert w.upper() == r.answer


def _fake_runs(effects: dict[str, float], pools: int = 8, seed: int = 0):
    import evidence as V

    rng = np.random.default_rng(seed)
    groups = ["chat", "add"]
    base = {"gold": {g: 2.0 for g in groups}, "wrong": {"add": 3.0}, "gold_w": {"add": 2.0}}
    runs = {}
    for p in range(pools):
        pool_shift = rng.normal(0, 0.05)
        for a in V.ARMS:
            v = 2.0 + pool_shift + effects.get(a, 0.0) + rng.normal(0, 0.01)
            ev = {"gold": {g: v for g in groups}, "wrong": {"add": 3.0}, "gold_w": {"add": v}}
            runs[(p, a)] = {"eval": ev, "train": {"tokens": 1, "examples": 1}}
    return runs, base


def test_decision_rule_says_yes_only_when_the_rule_holds():
    import evidence as V

    cfg = {"pools": 8}
    # clean and "unit" clearly better than random and Fisher in every pool: unit helps
    runs, base = _fake_runs({"clean": -0.1, "unit": -0.1})
    res = V.analyse(runs, base, cfg, "")
    assert res["positive_control"]["passes"]
    assert res["verdict"]["unit"]["helps"]
    assert not res["verdict"]["sampled"]["helps"]
    assert not res["verdict"]["spice"]["helps"]
    # the same arm without a passing positive control does not count
    runs, base = _fake_runs({"unit": -0.1})
    res = V.analyse(runs, base, cfg, "")
    assert not res["positive_control"]["passes"]
    assert not res["verdict"]["unit"]["helps"]
    # better than random but not than Fisher: no
    runs, base = _fake_runs({"clean": -0.1, "unit": -0.1, "fisher": -0.1})
    res = V.analyse(runs, base, cfg, "")
    assert not res["verdict"]["unit"]["helps"]
    assert res["noise"]["mde_macro"] > 0


def test_holm_matches_its_definition():
    import evidence as V

    ps = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5}
    adj = V.holm(ps)
    # sorted p: a .01*4, c .03*3, b .04*2, d .5*1, made monotone
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    import spice

    # the spice this process imported (the source tree, or an installed copy with its core)
    home = str(Path(spice.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [home] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))  # fmt: skip
    cmd = [sys.executable, str(ROOT / "bench" / "quality" / "evidence.py"), "--quick", "--out",
           str(tmp_path / "ev")]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    first = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "ev"
    res = json.loads((out / "results.json").read_text())
    assert res["pools_done"] == 2
    assert set(res["verdict"]) == {"spice", "unit", "sampled"}
    for a in ("random", "clean", "fisher", "unit", "sampled", "full"):
        assert a in res["macro"]
    for a in ("fisher", "unit", "sampled", "sampled_unit", "pool"):
        c = res["composition"][a]
        assert abs(sum(c[d] for d in E.DEFECTS) - 1.0) < 1e-9
    assert (out / "features-given" / "manifest.json").is_file()
    assert (out / "features-sampled" / "manifest.json").is_file()
    lines = (out / "universe.jsonl").read_text().splitlines()
    assert len(lines) == 80
    # a rerun skips every stage: no training, no features
    r2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "macro Δ" not in r2.stdout and "features (" not in r2.stdout
    assert json.loads((out / "results.json").read_text())["macro"] == res["macro"]
    assert first > 0
