"""Generated instruction mixture with exact-match answers and realistic defects.

Six task families (arithmetic, sorting, string reversal, upper-casing, a fixed lookup table,
date re-formatting). The training pool carries defects: records with wrong answers (their
gradients conflict with the clean ones), near-duplicates of other records, and off-task filler.
Held-out test sets are clean and share no prompt with the pool; a small clean validation set
(also disjoint) is what LESS-style selection may look at.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

FAMILIES = ("add", "sort", "reverse", "upper", "lookup", "date")

_ITEMS = [
    "apple", "brick", "cloud", "daisy", "ember", "flint", "grape", "heron", "igloo", "jelly",
    "koala", "lemon", "maple", "nylon", "olive", "pearl", "quail", "raven", "sugar", "tulip",
    "umber", "viola", "wheat", "xenon", "yacht", "zebra",
]  # fmt: skip
_COLOURS = ["red", "blue", "green", "gold", "grey", "pink", "teal", "white"]
_LOOKUP = {it: _COLOURS[(i * 5 + 3) % len(_COLOURS)] for i, it in enumerate(_ITEMS)}
_FILLER = (
    "lorem ipsum dolor sit amet the weather today is nice please subscribe click here to win "
    "a prize limited offer best deal free shipping read more comments below"
).split()


@dataclass
class Example:
    family: str
    prompt: str
    answer: str
    key: str  # canonical identity of the underlying problem (for disjointness)
    defect: str = "clean"  # clean | wrong | dup | filler
    meta: dict = field(default_factory=dict)

    def record(self, rid: str) -> dict:
        return {"id": rid, "prompt": self.prompt, "response": self.answer}


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


def _make(family: str, rng: random.Random) -> Example:
    if family == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        return Example(family, f"add {a} {b}\n", str(a + b), f"add:{a}:{b}")
    if family == "sort":
        ds = [rng.randint(0, 9) for _ in range(5)]
        s = "".join(map(str, ds))
        return Example(family, f"sort {s}\n", "".join(sorted(s)), f"sort:{s}")
    if family == "reverse":
        w = _word(rng, rng.randint(3, 6))
        return Example(family, f"reverse {w}\n", w[::-1], f"rev:{w}")
    if family == "upper":
        w = _word(rng, rng.randint(3, 6))
        return Example(family, f"upper {w}\n", w.upper(), f"up:{w}")
    if family == "lookup":
        it = rng.choice(_ITEMS)
        tag = rng.randint(0, 99)  # request number, irrelevant to the answer
        return Example(family, f"colour of {it} #{tag}\n", _LOOKUP[it], f"lk:{it}:{tag}")
    if family == "date":
        y, m, d = rng.randint(1990, 2029), rng.randint(1, 12), rng.randint(1, 28)
        return Example(family, f"date {y}-{m:02d}-{d:02d}\n", f"{d:02d}/{m:02d}/{y}",
                       f"date:{y}:{m}:{d}")  # fmt: skip
    raise ValueError(family)


def _corrupt(ex: Example, rng: random.Random) -> Example:
    """Same prompt, a plausible but wrong answer."""
    a = ex.answer
    if ex.family == "add":
        wrong = str(int(a) + rng.choice([-11, -10, -1, 1, 10, 11]))
    elif ex.family == "lookup":
        wrong = rng.choice([c for c in _COLOURS if c != a])
    elif ex.family == "date":
        wrong = ex.prompt.split()[1].strip()  # echoes the input format: the unformatted date
    else:
        chars = list(a)
        rng.shuffle(chars)
        wrong = "".join(chars)
        if wrong == a:
            wrong = a[1:] + a[:1] + "x"
    if wrong == a:
        wrong = a + "0"
    return Example(ex.family, ex.prompt, wrong, ex.key, "wrong")


def _near_dup(ex: Example, rng: random.Random) -> Example:
    """A near-duplicate: the same problem with cosmetic changes to the prompt."""
    p = ex.prompt.rstrip("\n")
    variant = rng.choice([p + " ", " " + p, p.replace(" ", "  ", 1)])
    return Example(ex.family, variant + "\n", ex.answer, ex.key, "dup")


def _filler(rng: random.Random) -> Example:
    q = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(3, 7)))
    a = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 5)))
    return Example("filler", q + "\n", a, f"fill:{q}", "filler")


@dataclass
class Mixture:
    pool: list[Example]
    test: dict[str, list[Example]]
    val: dict[str, list[Example]]

    def records(self) -> list[dict]:
        return [ex.record(f"p{i}") for i, ex in enumerate(self.pool)]

    def defect_rates(self) -> dict[str, float]:
        n = len(self.pool)
        out = {}
        for d in ("clean", "wrong", "dup", "filler"):
            out[d] = sum(ex.defect == d for ex in self.pool) / n
        return out


def make_mixture(
    n_pool: int,
    n_test: int = 40,
    n_val: int = 8,
    wrong: float = 0.15,
    dup: float = 0.15,
    filler: float = 0.10,
    seed: int = 0,
    family_weights: dict[str, float] | None = None,
) -> Mixture:
    """Pool of ``n_pool`` records (with defects), clean test and validation sets per family.

    Family frequencies in the pool are uneven (``family_weights``) as in real mixtures; test and
    validation prompts never occur in the pool (by canonical problem key).
    """
    rng = random.Random(seed)
    weights = family_weights or {"add": 3, "sort": 2, "reverse": 2, "upper": 1, "lookup": 1,
                                 "date": 1}  # fmt: skip
    fams = list(weights)
    w = [weights[f] for f in fams]
    held: dict[str, list[Example]] = {}
    held_keys: set[str] = set()
    for f in FAMILIES:
        exs: list[Example] = []
        seen: set[str] = set()
        while len(exs) < n_test + n_val:
            ex = _make(f, rng)
            if ex.key not in seen:
                seen.add(ex.key)
                exs.append(ex)
        held[f] = exs
        held_keys |= seen
    test = {f: held[f][:n_test] for f in FAMILIES}
    val = {f: held[f][n_test:] for f in FAMILIES}

    n_fill = int(round(filler * n_pool))
    n_dup = int(round(dup * n_pool))
    n_wrong = int(round(wrong * n_pool))
    n_base = n_pool - n_fill - n_dup
    base: list[Example] = []
    while len(base) < n_base:
        ex = _make(rng.choices(fams, w)[0], rng)
        if ex.key not in held_keys:
            base.append(ex)
    wrong_idx = rng.sample(range(n_base), min(n_wrong, n_base))
    for i in wrong_idx:
        base[i] = _corrupt(base[i], rng)
    clean_src = [ex for ex in base if ex.defect == "clean"]
    dups = [_near_dup(rng.choice(clean_src), rng) for _ in range(n_dup)]
    fills = [_filler(rng) for _ in range(n_fill)]
    pool = base + dups + fills
    rng.shuffle(pool)
    return Mixture(pool=pool, test=test, val=val)


def exact_match(pred: str, answer: str) -> bool:
    return pred.strip() == answer.strip()


def tokenizer_corpus() -> list[str]:
    """Text to train the byte-level BPE on (prompts and answers of every family + filler)."""
    rng = random.Random(12345)
    out = []
    for _ in range(300):
        for f in FAMILIES:
            ex = _make(f, rng)
            out.append(ex.prompt + ex.answer)
        out.append(_filler(rng).prompt)
    return out
