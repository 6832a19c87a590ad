"""GSM8K-style word problems, generated locally: what `scca data math` writes.

What it does: `generate(seed, n, split)` returns rows in GSM8K's own format,
`{"question": str, "answer": "<worked solution>\\n#### <number>"}`, so they go through
the same reader as a downloaded GSM8K file (`[task] name = "math"`, verifiers/tasks/fields.py).
Problems are one or two steps of +, - or * on small whole numbers with names and items,
e.g.

    question: "Mia has 7 pens. She buys 5 more pens. How many pens does Mia have now?"
    answer:   "Mia has 7 + 5 = 12 pens.\\n#### 12"

Held-out membership is a hash of the question (seed-independent), so the splits are
disjoint for every seed; rows within one call are distinct questions.

What it does NOT do: score (the `math` task does, with math-verify) or imitate GSM8K's
difficulty: these are small enough for a tiny model to learn in minutes on a CPU.
"""

from __future__ import annotations

import hashlib
import random

NAMES = (("Mia", "She"), ("Tom", "He"), ("Ava", "She"), ("Leo", "He"), ("Zoe", "She"), ("Sam", "He"),
         ("Ivy", "She"), ("Max", "He"))
ITEMS = ("apples", "pens", "cards", "books", "coins", "shells", "stickers", "marbles")
HELDOUT_SHARE = 10  # one question in HELDOUT_SHARE is held out
MAX_TRIES_PER_ROW = 1000


def is_heldout(question: str) -> bool:
    h = hashlib.sha1(("wordproblems-heldout:" + question).encode()).digest()
    return h[0] % HELDOUT_SHARE == 0


def _add(rng, name, pron, item, a, b):
    return (f"{name} has {a} {item}. {pron} buys {b} more {item}. How many {item} does {name} have now?",
            f"{name} has {a} + {b} = {a + b} {item}.", a + b)


def _sub(rng, name, pron, item, a, b):
    a, b = max(a, b), min(a, b)
    other = rng.choice([n for n, _ in NAMES if n != name])
    return (f"{name} has {a} {item}. {pron} gives {b} {item} to {other}. How many {item} does {name} have left?",
            f"{name} has {a} - {b} = {a - b} {item} left.", a - b)


def _mul(rng, name, pron, item, a, b):
    a, b = 1 + a % 9, 1 + b % 9
    return (f"{name} has {a} bags with {b} {item} in each bag. How many {item} does {name} have?",
            f"{name} has {a} * {b} = {a * b} {item}.", a * b)


def _two_step(rng, name, pron, item, a, b):
    c = rng.randint(1, a + b)
    other = rng.choice([n for n, _ in NAMES if n != name])
    return (f"{name} has {a} {item}. {pron} buys {b} more {item} and then gives {c} {item} to {other}. "
            f"How many {item} does {name} have now?",
            f"{name} has {a} + {b} = {a + b} {item}, then {a + b} - {c} = {a + b - c} {item}.", a + b - c)


KINDS = {"add": _add, "sub": _sub, "mul": _mul, "two_step": _two_step}


def generate(seed: int, n: int, split: str, max_number: int = 20, kinds: tuple[str, ...] = tuple(KINDS)) -> list[dict]:
    """n distinct GSM8K-style rows {"question", "answer"} of `split` ("train" or "heldout")."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown problem kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    rng = random.Random(f"wordproblems:{seed}:{split}")
    rows, seen = [], set()
    for _ in range(n * MAX_TRIES_PER_ROW):
        if len(rows) == n:
            break
        name, pron = rng.choice(NAMES)
        q, work, result = KINDS[rng.choice(kinds)](rng, name, pron, rng.choice(ITEMS),
                                                     rng.randint(1, max_number), rng.randint(1, max_number))
        if q in seen or is_heldout(q) != (split == "heldout"):
            continue
        seen.add(q)
        rows.append({"question": q, "answer": f"{work}\n#### {result}"})
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} distinct {split} problems with max_number={max_number}; asked for {n}")
    return rows
