"""The `arith` task: procedural multi-step arithmetic, written out step by step.

Prompt: the expression and `=`, e.g. `47+85+19=`.
Solution (what the model must write): each left-to-right step, then the answer after `#`:
`47+85=132;132+19=151;#151`.

Choices made here:
  * Operands have exactly `digits` digits (10..99 for 2); operators are `+` and `-`.
    Values stay non-negative: a `-` whose operand exceeds the running value becomes `+`
    (no negative numbers anywhere, which keeps the task learnable for a 2M model).
  * Held-out membership is a property of the prompt alone: a problem is held out iff the
    first 8 bytes of sha1("arith-heldout:" + prompt) fall in the lowest 5% bucket. Train
    generation skips those, so the splits are disjoint for every seed; the seed chooses
    which problems of each split are drawn. Rows within one call are distinct prompts.
  * Scoring is exact-match on the whole written-out solution: reward 1 iff the completion,
    with trailing whitespace removed, equals the solution string. A right final number
    reached with wrong or missing steps scores 0 (the task is the written-out procedure;
    this also lets the scorer name the first wrong character).
  * `first_wrong` is the index of the first character where the (right-stripped)
    completion differs from the solution; if one is a strict prefix of the other it is
    the length of the shorter one (too short: where the missing character would go; too
    long: the first extra character). None when correct.

What it does NOT do: run model output (pure string comparison; nothing is evaluated),
read JSONL, or know about tokens (with the character tokenizer one character = one token).
"""

from __future__ import annotations

import hashlib
import random

VERSION = "arith-1"
NAME = "arith"

HELDOUT_BUCKETS = 10_000
HELDOUT_FRACTION_BUCKETS = 500  # 500 / 10_000 = 5% of all problems are held out
SPLITS = ("train", "heldout")
MAX_DRAWS_PER_ROW = 200  # give up (ValueError) if the problem space is too small for n
MAX_SCAN = 4096  # scorer looks at most this far past the solution length


def solve(terms: list[int], ops: list[str]) -> tuple[str, str]:
    """(solution, answer) for the left-to-right evaluation of terms joined by ops."""
    value = terms[0]
    steps = []
    for op, t in zip(ops, terms[1:]):
        new = value + t if op == "+" else value - t
        steps.append(f"{value}{op}{t}={new}")
        value = new
    answer = str(value)
    return ";".join(steps) + f";#{answer}", answer


def is_heldout(prompt: str) -> bool:
    """Stable, seed-independent split membership of one problem."""
    h = hashlib.sha1(("arith-heldout:" + prompt).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") % HELDOUT_BUCKETS < HELDOUT_FRACTION_BUCKETS


def problem_id(prompt: str) -> str:
    """Stable id of a problem: `arith-` + first 12 hex digits of sha1(prompt)."""
    return "arith-" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def _draw(rng: random.Random, n_terms: int, digits: int) -> tuple[list[int], list[str]]:
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    terms = [rng.randint(lo, hi) for _ in range(n_terms)]
    ops = []
    value = terms[0]
    for t in terms[1:]:
        op = rng.choice("+-")
        if op == "-" and t > value:
            op = "+"
        value = value + t if op == "+" else value - t
        ops.append(op)
    return terms, ops


def generate(
    seed: int, n: int, split: str, n_terms: int = 3, digits: int = 2
) -> list[dict]:
    """n distinct problems of `split`; deterministic in (seed, n, split, n_terms, digits).

    A shorter call returns a prefix of a longer one with the same other arguments.
    Raises ValueError for a bad split/size or when n distinct problems cannot be found.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0 or n_terms < 2 or digits < 1:
        raise ValueError(f"bad sizes: n={n} n_terms={n_terms} digits={digits}")
    rng = random.Random(f"arith:{seed}:{split}:{n_terms}:{digits}")
    want_heldout = split == "heldout"
    rows: list[dict] = []
    seen: set[str] = set()
    draws = 0
    while len(rows) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_ROW * n + 10_000:
            raise ValueError(
                f"found only {len(rows)} distinct {split} problems of {n} asked "
                f"(n_terms={n_terms}, digits={digits}): problem space too small"
            )
        terms, ops = _draw(rng, n_terms, digits)
        prompt = str(terms[0]) + "".join(o + str(t) for o, t in zip(ops, terms[1:])) + "="
        if prompt in seen or is_heldout(prompt) != want_heldout:
            continue
        seen.add(prompt)
        solution, answer = solve(terms, ops)
        rows.append(
            {
                "id": problem_id(prompt),
                "prompt": prompt,
                "meta": {"answer": answer, "solution": solution},
            }
        )
    return rows


def _first_difference(a: str, b: str) -> int | None:
    """Index of the first differing character, len of the shorter if a prefix, else None."""
    n = min(len(a), len(b))
    # Compare in chunks so that long equal prefixes are checked at C speed.
    step = 64
    i = 0
    while i < n:
        j = min(i + step, n)
        if a[i:j] != b[i:j]:
            for k in range(i, j):
                if a[k] != b[k]:
                    return k
        i = j
    return None if len(a) == len(b) else n


def score(prompt: str, meta: dict, completion: str) -> dict:
    """{"reward": 1.0|0.0, "first_wrong": int|None, "reason": str}; never raises.

    reward = 1.0 iff completion.rstrip() == meta["solution"] (exact, step by step).
    """
    try:
        solution = meta.get("solution") if isinstance(meta, dict) else None
        if not isinstance(solution, str) or not solution:
            return {"reward": 0.0, "first_wrong": None, "reason": "meta has no solution"}
        if not isinstance(completion, str):
            return {"reward": 0.0, "first_wrong": 0, "reason": "completion is not text"}
        # Only the first len(solution)+MAX_SCAN characters can matter for the index; the
        # rest only decides whether there is extra non-whitespace text.
        head = completion[: len(solution) + MAX_SCAN]
        tail_extra = len(completion) > len(head) and not completion[len(head):].isspace()
        text = head if tail_extra else head.rstrip()
        idx = _first_difference(text, solution)
        if idx is None and not tail_extra:
            return {"reward": 1.0, "first_wrong": None, "reason": "correct"}
        if idx is None:
            idx = len(solution)
        if idx >= len(text):
            reason = "stops early (truncated solution)"
        elif idx >= len(solution):
            reason = "extra text after the solution"
        else:
            reason = f"wrong character at {idx}"
            answer = meta.get("answer")
            final = text[text.rfind("#") + 1:] if "#" in text else None
            if isinstance(answer, str) and final == answer:
                reason += " (final answer right, steps wrong)"
        return {"reward": 0.0, "first_wrong": idx, "reason": reason}
    except Exception as exc:  # fault policy: a scorer never raises into the verifier
        return {"reward": 0.0, "first_wrong": None, "reason": f"scorer error: {type(exc).__name__}"}
