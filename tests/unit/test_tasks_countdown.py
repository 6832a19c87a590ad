"""Tests of the `countdown` task: generation, the parser/evaluator and the scorer's rules."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verifiers.tasks import countdown as C

META = {"numbers": [3, 7, 25, 50], "target": 75, "use_all": False}
PROMPT = "3 7 25 50#75="


def test_generate_is_deterministic_prefix_stable_and_split():
    a = C.generate(5, 200, "train")
    assert a == C.generate(5, 200, "train") and C.generate(5, 50, "train") == a[:50]
    assert a != C.generate(6, 200, "train")
    held = C.generate(5, 50, "heldout")
    assert {r["prompt"] for r in a}.isdisjoint(r["prompt"] for r in held)
    assert all(C.is_heldout(r["prompt"]) for r in held)
    assert len({r["id"] for r in a}) == len({r["prompt"] for r in a}) == 200
    with pytest.raises(ValueError):
        C.generate(0, 3, "test")


@pytest.mark.parametrize("kw", [{}, {"n_numbers": 4, "use_all": True}, {"n_numbers": 5, "max_number": 100, "max_target": 999}])
def test_every_generated_row_is_solvable_by_its_reference(kw):
    rows = C.generate(1, 300, "train", **kw)
    for r in rows:
        m = r["meta"]
        assert r["prompt"] == " ".join(map(str, m["numbers"])) + f"#{m['target']}="
        assert 1 <= m["target"] <= kw.get("max_target", 200)
        assert C.score(r["prompt"], m, m["solution"]) == {"reward": 1.0, "reason": "correct"}
        assert set(r["prompt"]) <= set("0123456789 #=")


@pytest.mark.parametrize("completion", ["3*25", "25*3", "50+25", "(50+25)", "50+25=75",
                                        "((3*25))\nsome trailing text", "50 + 25", "3*(50-25)",
                                        "(50-25)*3", "(25*3)"])
def test_many_different_answers_are_correct(completion):
    assert C.score(PROMPT, META, completion)["reward"] == 1.0


def test_exact_rational_arithmetic():
    assert C.score("", {"numbers": [7, 2, 4], "target": 14}, "7/2*4")["reward"] == 1.0
    assert C.score("", {"numbers": [1, 49, 49], "target": 1}, "1/49*49")["reward"] == 1.0
    assert 1 / 49 * 49 != 1                                   # floats would get this wrong
    assert C.parse_eval("7/2") == (Fraction(7, 2), [7, 2])
    assert C.score("", {"numbers": [2, 3], "target": 1}, "2/3")["reward"] == 0.0


@pytest.mark.parametrize("completion,reason", [
    ("25*3+25-25", "uses numbers"),                 # 25 used three times
    ("75", "uses numbers"),                          # 75 is not given
    ("3*25*1", "uses numbers"),
    ("50+25.0", "parse error"),
    ("-3+78", "parse error"),                        # no unary minus
    ("__import__('os')", "parse error"),
    ("3**4", "parse error"),
    ("(50+25", "parse error"),
    ("50+25)", "parse error"),
    ("", "parse error"),
    ("050+25", "parse error"),
    ("50/(7-7)", "division by zero"),
    ("50+7", "value 57 != target 75"),
    ("(" * 40 + "50" + ")" * 40 + "+25", "parse error"),
    ("3+" * 200 + "3", "expression too long"),
])
def test_rule_violations_score_zero(completion, reason):
    r = C.score(PROMPT, META, completion)
    assert r["reward"] == 0.0 and r["reason"].startswith(reason), r


def test_use_all_requires_every_number_once():
    meta = dict(META, use_all=True)
    assert C.score(PROMPT, meta, "3*25")["reward"] == 0.0
    assert C.score(PROMPT, meta, "(50-25)*3+7-7")["reward"] == 0.0   # 7 twice
    assert C.score(PROMPT, dict(meta, numbers=[3, 7, 25, 50, 7]), "(50-25)*3+7-7")["reward"] == 1.0


def test_scorer_never_raises():
    assert C.score(PROMPT, {}, "3*25")["reward"] == 0.0
    assert C.score(PROMPT, META, None)["reward"] == 0.0


def _tree(nums):
    """Hypothesis strategy: (text, exact value, literals) of a random expression tree."""
    leaf = st.sampled_from(nums).map(lambda x: (str(x), Fraction(x), [x]))

    def node(kids):
        def comb(a, op, b):
            if op == "/" and b[1] == 0:
                op = "+"
            v = {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1],
                 "/": a[1] / b[1] if b[1] else 0}[op]
            return f"({a[0]}{op}{b[0]})", v, a[2] + b[2]
        return st.builds(comb, kids, st.sampled_from("+-*/"), kids)
    return st.recursive(leaf, node, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(_tree([1, 2, 3, 7, 10]))
def test_parser_agrees_with_tree_evaluation(t):
    text, value, literals = t
    assert C.parse_eval(text) == (value, literals)
    meta = {"numbers": literals, "target": value}
    expect = 1.0 if value.denominator == 1 else 0.0     # targets are integers
    if value.denominator == 1:
        meta["target"] = int(value)
    assert C.score("", meta, text)["reward"] == expect


def test_rows_round_trip_through_jsonl(tmp_path):
    from verifiers.tasks.jsonl import read_jsonl, write_jsonl
    rows = C.generate(3, 20, "train", n_numbers=4)
    write_jsonl(rows, tmp_path / "cd.jsonl")
    back = read_jsonl(tmp_path / "cd.jsonl", {"id": str, "prompt": str, "meta": dict})
    assert back == rows
    assert all(C.score(r["prompt"], r["meta"], r["meta"]["solution"])["reward"] == 1.0 for r in back)
