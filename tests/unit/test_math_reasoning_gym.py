"""The `math` verifier on a test set built from reasoning-gym's procedural generators
(a generator this project did not write; pinned in the `test` extra).

For every item of five datasets (chain_sum, basic_arithmetic, fraction_simplification,
decimal_arithmetic, gsm_symbolic) the right answer is written in every equivalent form a
model might use, and next to it wrong answers, the question's own expression or fraction
copied into the box, and equations whose right-hand side alone would match. Measured:
false positives (any reward 1 for a wrong or copied answer) must be 0, and every
equivalent form must get reward 1. decimal_arithmetic asks for 12 significant digits, so
its rows carry `rel_tol` = 1e-12 (the per-task tolerance the verdict records).
"""
from __future__ import annotations

import re
from fractions import Fraction

import pytest
import reasoning_gym

from verifiers.tasks import math as M

ITEMS = 40           # per dataset
SEED = 11
DECIMAL_REL_TOL = 1e-12
_EXPR = re.compile(r"[-+*/().\d\s]{3,}")


def _question_expression(q: str) -> str:
    """The question's LaTeX fraction, else its longest arithmetic expression (what a
    copier boxes)."""
    frac = re.search(r"\\[dt]?frac\{\d+\}\{\d+\}", q)
    if frac:
        return frac.group(0)
    runs = [m.group(0).strip() for m in _EXPR.finditer(q.replace("= ?", "").replace("=", " "))]
    runs = [r.rstrip(".").strip() for r in runs if re.search(r"\d\s*[-+*/]\s*[-(\d]", r)]
    return max(runs, key=len) if runs else ""


def _int_forms(n: int) -> tuple[list[str], list[str]]:
    right = [f"\\boxed{{{n}}}", f"so the total is\n#### {n}", f"\\boxed{{{n}.0}}", f"\\boxed{{{n}}}."]
    if n < 0:
        right.append(f"\\boxed{{\u2212{-n}}}")
    if abs(n) >= 1000:
        right += [f"\\boxed{{{n:,}}}", "\\boxed{" + f"{n:,}".replace(",", "\\,") + "}"]
    wrong = [f"\\boxed{{{n + 1}}}", f"\\boxed{{{n - 1}}}", f"\\boxed{{{n}1}}", f"\\boxed{{{n * 10}}}",
             f"\\boxed{{{n + 1} = {n}}}", f"\\boxed{{{n} + 0}}", f"\\boxed{{(2*{n})/2}}",
             f"\\boxed{{{2 * n}/2}}"]
    if n != 0:
        wrong.append(f"\\boxed{{{-n}}}")
    return right, wrong


def _fraction_forms(f: Fraction) -> tuple[list[str], list[str]]:
    a, b = f.numerator, f.denominator
    right = [f"\\boxed{{{a}/{b}}}", f"\\boxed{{\\frac{{{a}}}{{{b}}}}}", f"\\boxed{{\\dfrac{{{a}}}{{{b}}}}}",
             f"#### {a}/{b}", f"\\boxed{{{a}/{b}}}.", f"\\boxed{{${a}/{b}$}}"]
    wrong = [f"\\boxed{{{2 * a}/{2 * b}}}", f"\\boxed{{\\frac{{{3 * a}}}{{{3 * b}}}}}",
             f"\\boxed{{{float(f):.6f}}}", f"\\boxed{{{a + 1}/{b}}}", f"\\boxed{{{a}/{b + 1}}}",
             f"\\boxed{{{a}}}", f"\\boxed{{1 = {a}/{b}}}"]
    return right, wrong


def _decimal_forms(text: str) -> tuple[list[str], list[str]]:
    value = Fraction(text)
    right = [f"\\boxed{{{text}}}", f"\\boxed{{{text}0}}", f"#### {text}"]
    if text.startswith("0."):
        right.append(f"\\boxed{{{text[1:]}}}")
    digits = len(text.lstrip("-0.").replace(".", ""))
    last = Fraction(1, 10 ** len(text.split(".")[1])) if "." in text else Fraction(1)
    wrong = [f"\\boxed{{{float(value + last)!r}}}", f"\\boxed{{{float(value - last)!r}}}",
             f"\\boxed{{{float(value) * 10!r}}}", f"\\boxed{{{text} + 0}}"]
    if digits > 9:
        approx = f"{float(value):.8e}"
        if Fraction(approx) != value:
            wrong.append(f"\\boxed{{{approx}}}")
    return right, wrong


def _items():
    for name in ("chain_sum", "basic_arithmetic", "fraction_simplification",
                 "decimal_arithmetic", "gsm_symbolic"):
        for x in reasoning_gym.create_dataset(name, size=ITEMS, seed=SEED):
            yield name, x["question"], str(x["answer"])


def _forms(name: str, question: str, gold: str) -> tuple[list[str], list[str]]:
    g = gold.strip().strip("$")
    if name == "fraction_simplification":        # gold may be "a/b", "$a/b$" or "\\dfrac{a}{b}"
        m = re.fullmatch(r"(-?\d+)/(\d+)|\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", g)
        a, b = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        right, wrong = _fraction_forms(Fraction(int(a), int(b)))
    elif name == "decimal_arithmetic":
        right, wrong = _decimal_forms(g)
    else:
        right, wrong = _int_forms(int(g))
        if name == "gsm_symbolic":
            right.append(f"\\boxed{{\\${g}}}")
    copied = _question_expression(question)
    if copied:
        wrong.append(f"\\boxed{{{copied}}}")
        wrong.append(f"The answer is \\boxed{{{copied} = {g}}}")
    return right, wrong


def test_reasoning_gym_math_set_no_false_positive_and_all_equivalents_accepted():
    false_pos, rejected, verdicts, copies = [], [], 0, 0
    for name, question, gold in _items():
        meta = {"answer": gold}
        if name == "decimal_arithmetic":
            meta["rel_tol"] = DECIMAL_REL_TOL
        right, wrong = _forms(name, question, gold)
        copies += any(_question_expression(question) in w for w in wrong if _question_expression(question))
        for c in right:
            r = M.score(question, meta, c)
            verdicts += 1
            if r["reward"] != 1.0:
                rejected.append((name, gold, c, r["reason"]))
        for c in wrong:
            r = M.score(question, meta, c)
            verdicts += 1
            if r["reward"] != 0.0:
                false_pos.append((name, gold, c, r["reason"]))
    assert verdicts > 2000 and copies >= 4 * ITEMS      # the set really covers copying
    assert false_pos == [], false_pos[:10]
    assert rejected == [], rejected[:10]


@pytest.mark.parametrize("question,expr", [
    ("State the final answer to the following arithmetic problem: 1663 - 5242 - 9376 =", "1663 - 5242 - 9376"),
    ("Calculate ( 56 + -33 ) - 84.", "( 56 + -33 ) - 84"),
    ("Simplify the fraction $17080/42490$ to its lowest terms.", "17080/42490"),
    ("Simplify the fraction $\\dfrac{1785}{2635}$ to its lowest terms.", "\\dfrac{1785}{2635}"),
])
def test_question_expression_is_found(question, expr):
    assert _question_expression(question) == expr
