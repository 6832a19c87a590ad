"""The `countdown` task: reach a target from given numbers with + - * / and parentheses.

Prompt: the numbers, `#`, the target, `=`; e.g. `3 7 25#75=`. The model writes an
expression over the given numbers. Rule: each given number may be used AT MOST ONCE (a
subset is fine); meta["use_all"]=True requires every number exactly once. Any expression
with the right exact value is correct, so there are many solutions: for `3 7 25#75=`
both `3*25` and `25*3` score 1, while `(7-3-1)*25` scores 0 (1 is not given).

Scoring (`score`): the expression is the completion up to the first `=` or newline
(so `3*25=75` is fine), spaces ignored. It is parsed by a small recursive-descent parser
(grammar below, no eval), evaluated in exact rational arithmetic (fractions; division by
zero scores 0), and reward = 1 iff every literal is a given number, the multiset of
literals is within the given multiset (exactly equal when use_all), and value == target.
    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := NUMBER | "(" expr ")"          (no unary minus, no decimals)

Generation (`generate(seed, n, split)`): draws `n_numbers` numbers in [1, max_number],
builds a random binary expression over a random ordering of a random subset (all of them
when use_all) whose value is a positive integer <= max_target (every intermediate value a
non-negative integer, divisions exact), and takes its value as the target; so every row
is solvable by construction and meta carries one reference solution. Held-out membership
is a property of the prompt (sha1 bucket), as in `arith`; rows within a call are distinct.

Does NOT: run model output, or rank solutions (shorter is not better).
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction

VERSION = "countdown-1"
NAME = "countdown"
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 10_000
HELDOUT_FRACTION_BUCKETS = 500       # 5% of prompts are held out
MAX_DRAWS_PER_ROW = 200
MAX_EXPR_CHARS = 256                 # longer expressions score 0 without parsing
MAX_DEPTH = 32                       # parenthesis nesting limit of the parser


class ParseError(ValueError):
    pass


def _tokens(s: str) -> list[str]:
    out, i = [], 0
    while i < len(s):
        c = s[i]
        if c.isdigit():
            j = i
            while j < len(s) and s[j].isdigit():
                j += 1
            out.append(s[i:j])
            i = j
        elif c in "+-*/()":
            out.append(c)
            i += 1
        elif c == " ":
            i += 1
        else:
            raise ParseError(f"unexpected character {c!r}")
    return out


def parse_eval(expr: str) -> tuple[Fraction, list[int]]:
    """(exact value, literals used) of `expr`. Raises ParseError / ZeroDivisionError."""
    toks = _tokens(expr)
    pos = 0
    literals: list[int] = []

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def parse_expr(depth):
        v = parse_term(depth)
        while peek() in ("+", "-"):
            v = v + parse_term(depth) if take() == "+" else v - parse_term(depth)
        return v

    def parse_term(depth):
        v = parse_factor(depth)
        while peek() in ("*", "/"):
            if take() == "*":
                v = v * parse_factor(depth)
            else:
                v = v / parse_factor(depth)   # Fraction: ZeroDivisionError on 0
        return v

    def parse_factor(depth):
        t = peek()
        if t is None:
            raise ParseError("unexpected end")
        if t == "(":
            if depth >= MAX_DEPTH:
                raise ParseError("nested too deep")
            take()
            v = parse_expr(depth + 1)
            if peek() != ")":
                raise ParseError("missing )")
            take()
            return v
        if t.isdigit():
            take()
            if len(t) > 1 and t[0] == "0":
                raise ParseError("leading zero")
            literals.append(int(t))
            return Fraction(int(t))
        raise ParseError(f"unexpected {t!r}")

    if not toks:
        raise ParseError("empty expression")
    value = parse_expr(0)
    if pos != len(toks):
        raise ParseError(f"unexpected {toks[pos]!r}")
    return value, literals


def _uses_allowed(literals: list[int], numbers: list[int], use_all: bool) -> bool:
    pool: dict[int, int] = {}
    for x in numbers:
        pool[x] = pool.get(x, 0) + 1
    for x in literals:
        if pool.get(x, 0) == 0:
            return False
        pool[x] -= 1
    return not use_all or not any(pool.values())


def extract(completion: str) -> str:
    """The expression part of a completion: up to the first '=' or newline."""
    end = len(completion)
    for c in "=\n":
        i = completion.find(c)
        if i >= 0:
            end = min(end, i)
    return completion[:end].strip()


def score(prompt: str, meta: dict, completion: str) -> dict:
    """{"reward": 1.0|0.0, "reason": str}; never raises (fault policy: reward 0)."""
    try:
        numbers, target = list(meta["numbers"]), int(meta["target"])
        use_all = bool(meta.get("use_all", False))
        if not isinstance(completion, str):
            return {"reward": 0.0, "reason": "completion is not text"}
        expr = extract(completion)
        if len(expr) > MAX_EXPR_CHARS:
            return {"reward": 0.0, "reason": "expression too long"}
        try:
            value, literals = parse_eval(expr)
        except ParseError as e:
            return {"reward": 0.0, "reason": f"parse error: {e}"}
        except ZeroDivisionError:
            return {"reward": 0.0, "reason": "division by zero"}
        if not _uses_allowed(literals, numbers, use_all):
            return {"reward": 0.0, "reason": "uses numbers not given (or too often)"
                    + (" / not all numbers" if use_all else "")}
        if value != target:
            return {"reward": 0.0, "reason": f"value {value} != target {target}"}
        return {"reward": 1.0, "reason": "correct"}
    except Exception as exc:  # fault policy: a scorer never raises into the verifier
        return {"reward": 0.0, "reason": f"scorer error: {type(exc).__name__}"}


def is_heldout(prompt: str) -> bool:
    h = hashlib.sha1(("countdown-heldout:" + prompt).encode()).digest()
    return int.from_bytes(h[:8], "big") % HELDOUT_BUCKETS < HELDOUT_FRACTION_BUCKETS


def problem_id(prompt: str, use_all: bool = False) -> str:
    key = prompt + ("|all" if use_all else "")
    return "countdown-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _combine(rng: random.Random, a: tuple[int, str], b: tuple[int, str]):
    """Random exact combination of two (value, text) pairs; None if no op keeps integers."""
    ops = ["+", "*"] + (["-"] if a[0] >= b[0] else []) + (["/"] if b[0] and a[0] % b[0] == 0 else [])
    op = rng.choice(ops)
    value = {"+": a[0] + b[0], "-": a[0] - b[0], "*": a[0] * b[0],
             "/": a[0] // b[0] if b[0] else 0}[op]
    return value, f"({a[1]}{op}{b[1]})"


def _random_solution(rng, numbers, use_all, max_target):
    k = len(numbers) if use_all else rng.randint(2, len(numbers))
    items = [(x, str(x)) for x in rng.sample(numbers, k)]
    while len(items) > 1:
        i, j = rng.sample(range(len(items)), 2)
        a, b = items[i], items[j]
        items = [it for t, it in enumerate(items) if t not in (i, j)]
        items.append(_combine(rng, a, b))
    value, text = items[0]
    if not 1 <= value <= max_target:
        return None
    return value, text[1:-1] if text.startswith("(") else text


def generate(seed: int, n: int, split: str, n_numbers: int = 3, max_number: int = 20,
             max_target: int = 200, use_all: bool = False) -> list[dict]:
    """n distinct solvable problems of `split`; deterministic in all arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 0 or n_numbers < 2 or max_number < 1 or max_target < 1:
        raise ValueError(f"bad sizes: n={n} n_numbers={n_numbers} max_number={max_number}")
    rng = random.Random(f"countdown:{seed}:{split}:{n_numbers}:{max_number}:{max_target}:{use_all}")
    rows, seen, draws = [], set(), 0
    while len(rows) < n:
        draws += 1
        if draws > MAX_DRAWS_PER_ROW * n + 10_000:
            raise ValueError(f"found only {len(rows)} distinct {split} problems of {n}")
        numbers = [rng.randint(1, max_number) for _ in range(n_numbers)]
        sol = _random_solution(rng, numbers, use_all, max_target)
        if sol is None:
            continue
        target, solution = sol
        prompt = " ".join(map(str, numbers)) + f"#{target}="
        if prompt in seen or is_heldout(prompt) != (split == "heldout"):
            continue
        seen.add(prompt)
        rows.append({"id": problem_id(prompt, use_all), "prompt": prompt,
                     "meta": {"numbers": numbers, "target": target, "use_all": use_all,
                              "solution": solution}})
    return rows
