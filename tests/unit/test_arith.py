"""Tests of the `arith` task: generation, split, solutions and the exact-match scorer."""

import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from verifiers.tasks import arith


def _fold(expr: str) -> int:
    """Independent left-to-right evaluation of 'a+b-c' (no eval)."""
    tokens = re.findall(r"\d+|[+-]", expr)
    value = int(tokens[0])
    for op, num in zip(tokens[1::2], tokens[2::2]):
        value = value + int(num) if op == "+" else value - int(num)
    return value


def test_generate_is_deterministic_and_prefix_stable():
    a = arith.generate(7, 300, "train")
    b = arith.generate(7, 300, "train")
    assert a == b
    assert arith.generate(7, 100, "train") == a[:100]
    assert arith.generate(8, 300, "train") != a
    assert arith.generate(7, 50, "heldout") == arith.generate(7, 50, "heldout")


def test_row_shape_and_ids():
    rows = arith.generate(0, 50, "train")
    assert len(rows) == 50
    assert len({r["prompt"] for r in rows}) == 50
    for r in rows:
        assert set(r) == {"id", "prompt", "meta"}
        assert re.fullmatch(r"arith-[0-9a-f]{12}", r["id"])
        assert r["id"] == arith.problem_id(r["prompt"])
        assert re.fullmatch(r"\d\d[+-]\d\d[+-]\d\d=", r["prompt"])


def test_splits_are_disjoint_and_heldout_is_about_five_percent():
    train = arith.generate(0, 4000, "train")
    held = arith.generate(0, 500, "heldout")
    held_other_seed = arith.generate(1, 500, "heldout")
    train_prompts = {r["prompt"] for r in train}
    assert not train_prompts & {r["prompt"] for r in held}
    assert not train_prompts & {r["prompt"] for r in held_other_seed}
    assert all(arith.is_heldout(r["prompt"]) for r in held)
    assert not any(arith.is_heldout(r["prompt"]) for r in train)
    # Membership rate over fresh draws: 5% +- a generous margin.
    frac = sum(arith.is_heldout(f"{a}+{b}+{c}=") for a in range(10, 40)
               for b in range(10, 40) for c in range(10, 30)) / (30 * 30 * 20)
    assert 0.035 < frac < 0.065


def test_solutions_are_correct_step_by_step():
    for r in arith.generate(3, 500, "train") + arith.generate(3, 100, "heldout"):
        expr = r["prompt"][:-1]
        sol, ans = r["meta"]["solution"], r["meta"]["answer"]
        assert int(ans) == _fold(expr) >= 0
        *steps, final = sol.split(";")
        assert final == "#" + ans
        assert len(steps) == 2
        running = expr
        for s in steps:
            lhs, rhs = s.split("=")
            assert int(rhs) == _fold(lhs)
            assert running.startswith(lhs)
            running = rhs + running[len(lhs):]
        assert running == ans
    r = arith.generate(0, 1, "train")[0]
    assert arith.score(r["prompt"], r["meta"], r["meta"]["solution"])["reward"] == 1.0


def test_parameters_n_terms_and_digits():
    rows = arith.generate(0, 40, "train", n_terms=4, digits=3)
    for r in rows:
        assert re.fullmatch(r"\d{3}[+-]\d{3}[+-]\d{3}[+-]\d{3}=", r["prompt"])
        assert r["meta"]["solution"].count(";") == 3
        assert int(r["meta"]["answer"]) == _fold(r["prompt"][:-1])


def test_known_example_and_scores():
    sol, ans = arith.solve([47, 85, 19], ["+", "+"])
    assert (sol, ans) == ("47+85=132;132+19=151;#151", "151")
    meta = {"answer": ans, "solution": sol}
    p = "47+85+19="
    assert arith.score(p, meta, sol) == {"reward": 1.0, "first_wrong": None, "reason": "correct"}
    assert arith.score(p, meta, sol + " \n\t")["reward"] == 1.0
    wrong = arith.score(p, meta, "47+85=131;131+19=150;#150")
    assert wrong["reward"] == 0.0 and wrong["first_wrong"] == 8
    # Right final number, wrong steps: still wrong, index of the first wrong character.
    lucky = arith.score(p, meta, "47+85=130;132+19=151;#151")
    assert lucky["reward"] == 0.0 and lucky["first_wrong"] == 8
    assert "final answer right" in lucky["reason"]
    # Bare answer only: wrong at index 0.
    assert arith.score(p, meta, "#151")["first_wrong"] == 0
    # Too short: index where the missing character would go.
    short = arith.score(p, meta, "47+85=132;")
    assert short == {"reward": 0.0, "first_wrong": 10, "reason": "stops early (truncated solution)"}
    assert arith.score(p, meta, "")["first_wrong"] == 0
    # Too long: first extra character.
    long_ = arith.score(p, meta, sol + ";#151")
    assert long_["reward"] == 0.0 and long_["first_wrong"] == len(sol)
    # Leading whitespace is not forgiven.
    assert arith.score(p, meta, " " + sol)["first_wrong"] == 0


def test_hostile_input_is_fast_and_never_raises():
    meta = {"answer": "151", "solution": "47+85=132;132+19=151;#151"}
    p = "47+85+19="
    big_cases = [
        "x" * 1_000_000,
        meta["solution"] + " " * 1_000_000,
        meta["solution"] + " " * 1_000_000 + "x",
        meta["solution"] + "\U0001F600" * 300_000,
        "\ud800\udfff\x00" * 300_000,
    ]
    t0 = time.perf_counter()
    out = [arith.score(p, meta, c) for c in big_cases]
    assert time.perf_counter() - t0 < 0.5
    assert [o["reward"] for o in out] == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert out[2]["first_wrong"] == len(meta["solution"])
    assert out[3]["first_wrong"] == len(meta["solution"])
    for bad_meta, comp in [({}, "1"), (None, "1"), ({"solution": 5}, "5"), (meta, None),
                           (meta, b"47+85"), (meta, 12)]:
        o = arith.score(p, bad_meta, comp)
        assert o["reward"] == 0.0 and isinstance(o["reason"], str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_score_contract(completion):
    meta = {"answer": "151", "solution": "47+85=132;132+19=151;#151"}
    o = arith.score("47+85+19=", meta, completion)
    assert set(o) == {"reward", "first_wrong", "reason"}
    if completion.rstrip() == meta["solution"]:
        assert o["reward"] == 1.0 and o["first_wrong"] is None
    else:
        i = o["first_wrong"]
        text = completion.rstrip()
        assert o["reward"] == 0.0
        assert text[:i] == meta["solution"][:i]
        assert i == min(len(text), len(meta["solution"])) or text[i] != meta["solution"][i]


def test_bad_split_raises():
    for bad in ("test", ""):
        try:
            arith.generate(0, 1, bad)
        except ValueError:
            continue
        raise AssertionError("expected ValueError")
    try:
        arith.generate(0, 200, "train", n_terms=2, digits=1)
    except ValueError as e:
        assert "too small" in str(e)
    else:
        raise AssertionError("expected ValueError: too few distinct problems")
