"""Answers that must be answers: normalising a final math answer and judging numeric ones.

`normalise(text)` removes what is typography, not mathematics (linear, bounded input):
`$`, `\\$`, thin/negative/medium spaces (`\\,` `\\!` `\\;` `\\:` `~` `\\ `), `\\left`/`\\right`,
`\\text{...}`/`\\mbox{...}`/`\\mathrm{...}` units, degree marks, `\\%`, Unicode minus, digit
group commas (`12,955`) and spaces between digit groups, a closing period, and
a single leading `x =` (a lone variable named as the answer).

`parse_number(text)` reads a number WRITTEN OUT: an integer, a decimal (`-3.50`, `.5`,
`1e-3`), a fraction `a/b` or `\\frac{a}{b}` / `\\dfrac` / `\\tfrac` (sign in front or on
the numerator). Anything else — `1663 - 5242 - 9376`, `2*3`, `\\sqrt{4}` — is not a
number (None). Returns (value: Fraction, kind: "int" | "decimal" | "fraction").

`judge_number(answer, gold, rel_tol, abs_tol)`: when the reference is a number, the answer
must be a number too ("not_a_number" otherwise: the question's own expression never
scores); a fraction answer must be in lowest terms with a denominator above 1
("fraction_not_reduced": `6/14` is the question, not the answer); values compare exactly
as rationals, or — when either side is written as a decimal — with math.isclose(rel_tol,
abs_tol) (a per-task setting the verdict records).

`equation_problem(answer, gold)`: an answer with `=` (after the lone-variable prefix is
dropped) is refused unless the reference is an equation too (then math-verify compares
the equations whole).

Does NOT: evaluate expressions, or judge symbolic answers (math-verify does, math.py).
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_NUMBER_CHARS = 200        # longer "numbers" are not parsed (no huge Fraction work)
MAX_EXPONENT = 400            # |e| above this in 1e400-style numbers is not a number

_SPACES = ("\\,", "\\!", "\\;", "\\:", "\\ ", "~", "\\quad", "\\qquad", "\u2009", "\u202f",
           "\u00a0")
_DROP = ("\\left", "\\right", "\\displaystyle", "^\\circ", "^{\\circ}", "\\circ", "°",
         "\\%", "%", "\\$", "$")
_UNIT = re.compile(r"\\(?:text|mbox|mathrm|textbf)\{[^{}]{0,64}\}")
_GROUPS = re.compile(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])")
_SPACE_GROUPS = re.compile(r"(?<![\d.])(\d{1,3})((?: \d{3})+)(?![\d])")
_LONE_VAR = re.compile(r"^[A-Za-z](?:_\{?[A-Za-z0-9]{1,8}\}?)?\s*=\s*(?=[^=])")
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d{1,4})?")
_SLASH = re.compile(r"([+-]?)(\d+)/(\d+)")
_FRAC = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?)(\d+)\}\{(\d+)\}")


def normalise(text: str) -> str:
    """Typography removed (see the module docstring); the text is assumed short (capped)."""
    s = text.strip().replace("\u2212", "-").replace("\u2013", "-")
    s = _UNIT.sub("", s)
    for t in _SPACES:
        s = s.replace(t, " ")
    for t in _DROP:
        s = s.replace(t, "")
    s = s.strip()
    while s.endswith((".", "。")):         # a closing period is punctuation
        s = s[:-1].rstrip()
    s = _GROUPS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = _SPACE_GROUPS.sub(lambda m: m.group(1) + m.group(2).replace(" ", ""), s)
    s = _LONE_VAR.sub("", s, count=1)
    return s.strip()


def parse_number(text: str) -> tuple[Fraction, str] | None:
    """(exact value, "int" | "decimal" | "fraction") of a written-out number, else None."""
    s = text.replace(" ", "")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    if s.startswith("{") and s.endswith("}") and s.count("{") == 1:
        s = s[1:-1]
    if _DECIMAL.fullmatch(s):
        mant, _, exp = s.lower().partition("e")
        if exp and abs(int(exp)) > MAX_EXPONENT:
            return None
        kind = "int" if re.fullmatch(r"[+-]?\d+", s) else "decimal"
        return Fraction(s), kind
    m = _SLASH.fullmatch(s) or _FRAC.fullmatch(s)
    if not m:
        return None
    g = m.groups()
    sign = -1 if (g[0] == "-") != (len(g) == 4 and g[1] == "-") else 1
    num, den = int(g[-2]), int(g[-1])
    if den == 0:
        return None
    return Fraction(sign * num, den), "fraction:%d/%d" % (num, den)


def judge_number(answer: str, gold: Fraction, gold_kind: str, rel_tol: float,
                 abs_tol: float) -> tuple[bool, str]:
    """(correct, reason) for a normalised answer against a numeric reference."""
    parsed = parse_number(answer)
    if parsed is None:
        return False, "not_a_number (the reference is a number; write the number itself)"
    value, kind = parsed
    if kind.startswith("fraction"):
        num, den = (int(x) for x in kind.split(":")[1].split("/"))
        if den == 1 or math.gcd(num, den) != 1:
            return False, "fraction_not_reduced"
    if value == gold:
        return True, "correct"
    if "decimal" in (kind, gold_kind):
        if math.isclose(float(value), float(gold), rel_tol=rel_tol, abs_tol=abs_tol):
            return True, "correct"
    return False, "wrong_answer"


def equation_problem(answer: str, gold: str) -> str | None:
    """A reason to refuse an answer that is an equation where the reference is not."""
    strip = lambda t: t.replace("\\leq", "").replace("\\geq", "").replace("\\neq", "")  # noqa: E731
    if "=" in strip(answer) and "=" not in strip(gold):
        return "equation_answer (the reference is not an equation; give the value alone)"
    return None
