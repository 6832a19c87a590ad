"""Host side of code verdicts: converting trusted asserts into steps + checks, and judging
the sandbox's answers (no sandbox runs here: the answers are written by hand)."""

import base64
import json

import pytest

from verifiers import sandbox_tests as T
from verifiers.sandbox_verdict import encode_value


def _report(*records, clean=True, over=False):
    raw = "".join(json.dumps(r) + "\n" for r in records).encode()
    return {"rc": 0, "clean": clean, "over": over, "raw": raw}


def _answers(plan, values):
    return _report(*[{"i": i, "v": encode_value(v)} if "eval" in s else {"i": i, "ok": 1}
                     for i, (s, v) in enumerate(zip(plan.steps, values))], {"done": True})


def test_literal_loops_helpers_and_inlining_fold_on_the_host():
    code = ("import math\nN = 3\ncases = [(n, n * n) for n in range(N)]\n"
            "def check(candidate):\n    for x, want in cases:\n        assert candidate(x) == want\n"
            "check(square)\nif __name__ == '__main__':\n    assert square(-2) == 4\n")
    plan = T.plan(code)
    evals = [s for s in plan.steps if "eval" in s]
    assert [s["eval"] for s in evals] == ["candidate(x)"] * 3 + ["square(-2)"]
    assert [s["bind"] for s in evals[:3]] == [{"x": encode_value(i)} for i in range(3)]
    assert [c["expected"] for c in plan.checks.values()] == [0, 1, 4, 4]
    assert plan.counts() == {"checks": 4, "hidden_checks": 4, "visible_checks": 0,
                             "guessable_checks": 0, "attested_asserts": 0}
    assert "want" not in json.dumps(plan.steps) and "cases" not in json.dumps(plan.steps)


def test_check_kinds_are_counted():
    code = ("assert f(1) == 2\nassert f(2) != 3 and f(3) > 1\nassert abs(f(4) - 0.5) < 1e-6\n"
            "assert math.isclose(f(5), 2.5, rel_tol=1e-3)\nassert f(6) in (1, 2)\n"
            "assert 7 in g()\nassert f(7) == f(8)\nassert f(9)\nassert not f(10)\nassert f(0) is None\n"
            "assert f(1) == True\ntry:\n    f(-1)\n    assert False\nexcept ValueError:\n    pass\n")
    plan = T.plan(code)
    ops = [c["op"] for c in plan.checks.values()]
    assert ops == ["eq", "ne", "gt", "approx", "isclose", "in", "contains", "pair", "truthy",
                   "falsy", "is", "eq"]
    assert plan.counts() == {"checks": 12, "hidden_checks": 7, "visible_checks": 1,
                             "guessable_checks": 4, "attested_asserts": 1}


def test_expected_value_handed_to_the_sandbox_becomes_visible():
    plan = T.plan("want = [1, 2]\nhelper = lambda: want\nassert f() == want\nassert f() == [3]\n")
    assert [c["strength"] for c in plan.checks.values()] == ["visible", "hidden"]


def test_judge_rules():
    plan = T.plan("assert f(1) == 2\nassert g() == [1.0, 'a']\n")
    assert T.judge(plan, _answers(plan, [2, [1, "a"]])) == (1.0, "pass")
    assert T.judge(plan, _answers(plan, [2.0000000001, (1, "a")]))[1] == "wrong_answer (check 1)"
    assert T.judge(plan, _answers(plan, [3, [1, "a"]])) == (0.0, "wrong_answer (check 0)")
    assert T.judge(plan, _report({"i": 0, "v": encode_value(2)}, {"done": True}))[1] == "tests_not_finished (step 1)"
    assert T.judge(plan, _report({"i": 1, "v": encode_value(2)}))[1] == "bad_record (step 0)"
    twice = _report({"i": 0, "v": encode_value(2)}, {"i": 0, "v": encode_value(2)}, {"done": True})
    assert T.judge(plan, twice)[1] == "bad_record (step 1)"
    assert T.judge(plan, _report({"stage": "solution", "exc": "SyntaxError"}))[1] == "error: solution: SyntaxError"
    assert T.judge(plan, _report({"i": 0, "exc": "ZeroDivisionError"}))[1].startswith("error: tests: ZeroDivisionError")
    assert T.judge(plan, _answers(plan, [2, [1, "a"]]) | {"clean": False})[1] == "cleanup_failed"
    assert T.judge(plan, _answers(plan, [2, [1, "a"]]) | {"over": True})[1] == "result_limit"
    assert T.judge(plan, {"rc": 0, "clean": True, "over": False, "raw": b"{oops\n"})[1].startswith("bad_record")
    assert T.judge(plan, None) == (0.0, "no_report")
    late = _answers(plan, [2, [1, "a"]])
    late["raw"] += b'{"i": 2, "v": ["N"]}\n'
    assert T.judge(plan, late)[1] == "bad_record (after done)"


def test_constant_and_empty_tests():
    assert T.judge(T.plan("assert 1 == 2\n"), _report({"done": True})) == (0.0, "tests assert a false constant")
    assert T.judge(T.plan("x = 1\n"), _report({"done": True}))[1].startswith("no_checks")


def test_stdout_match_and_bad_formats():
    assert T.stdout_match("3\n", "3", 1e-9, 0) and T.stdout_match("1  2\n3", "1 2 3", 1e-9, 0)
    assert T.stdout_match("0.30000000000000004", "0.3", 1e-9, 0)
    assert not T.stdout_match("3.0", "3", 1e-9, 0)       # integers compare as written
    assert not T.stdout_match("nan", "0.5", 1e-9, 0) and not T.stdout_match("1 2", "1", 1e-9, 0)
    for bad in ([], [{"stdin": 1, "stdout": "2"}], [{"call": "f"}], [{"call": "f(", "expect": 1}], 5):
        with pytest.raises(T.PlanError):
            T.plan(bad)
    with pytest.raises(T.PlanError, match="steps"):
        T.plan("for i in range(10 ** 5):\n    assert f(i) == i\n")


def test_recursive_helper_is_refused():
    with pytest.raises(T.PlanError, match="calls itself"):
        T.plan("def c(f):\n    assert f(1) == 1\n    c(f)\nc(g)\n")


def test_report_base64_roundtrip_for_the_host():
    from verifiers import sandbox as S
    raw = b'{"done": true}\n'
    line = "n0nce " + json.dumps({"rc": 0, "clean": True, "over": False,
                                  "results": base64.b64encode(raw).decode()})
    assert S._report("noise\n" + line + "\n", "n0nce", S.DEFAULT_LIMITS)["raw"] == raw
    assert S._report(line.replace("n0nce", "other"), "n0nce", S.DEFAULT_LIMITS) is None
    assert S._report("n0nce {bad", "n0nce", S.DEFAULT_LIMITS) is None


def test_inputs_belong_to_the_sandbox_once_handed_over():
    plan = T.plan("x = [3, 1, 2]\nassert srt(x) == [1, 2, 3]\nassert x == [3, 1, 2]\n"
                  "import math\nassert root(2) == math.sqrt(2)\n")
    assert [s.get("eval") for s in plan.steps] == ["srt(x)", "x", None, "root(2)"]
    assert plan.checks[1]["expected"] == [3, 1, 2] and plan.checks[3]["expected"] == 2 ** 0.5
    assert plan.counts()["hidden_checks"] == 3


def test_all_and_chained_comparisons_become_separate_checks():
    plan = T.plan("assert all(sq(i) == i * i for i in range(4) if i != 2)\nassert 0 < f(1) < 5\n"
                  "assert all(g(x) for x in [1, 2])\n")
    assert [(s["eval"], c["op"], c.get("expected")) for s, c in zip(plan.steps, plan.checks.values())] == [
        ("sq(i)", "eq", 0), ("sq(i)", "eq", 1), ("sq(i)", "eq", 9), ("f(1)", "gt", 0), ("f(1)", "lt", 5),
        ("g(x)", "truthy", None), ("g(x)", "truthy", None)]
    assert plan.counts()["hidden_checks"] == 5


def test_unittest_classes_become_host_checks():
    code = ("import unittest\nclass T(unittest.TestCase):\n    def test_b(self):\n        self.assertEqual(f(2), 4)\n"
            "        self.assertAlmostEqual(g(1), 0.5, places=3)\n    def test_a(self):\n        self.assertTrue(h(1))\n"
            "        self.assertIn(f(1), [1, 2])\n        self.assertIsNone(k())\nif __name__ == '__main__':\n    unittest.main()\n")
    plan = T.plan(code)
    assert [s.get("eval") for s in plan.steps] == [None, "h(1)", "f(1)", "k()", "f(2)", "g(1)"]
    assert [c["op"] for c in plan.checks.values()] == ["truthy", "in", "is", "eq", "approx"]
    assert plan.counts()["hidden_checks"] == 3 and plan.attested == 0
    kept = T.plan("import unittest\nclass T(unittest.TestCase):\n    def setUp(self):\n        self.x = 1\n"
                  "    def test_a(self):\n        self.assertEqual(f(self.x), 2)\nunittest.main(exit=False)\n")
    assert kept.checks == {} and kept.attested == 1 and "wasSuccessful" in kept.steps[-1]["exec"]
    assert all("exit=False)" not in s.get("exec", "") or "__scca_run" in s["exec"] for s in kept.steps)


def test_revealing_the_case_table_makes_its_answers_visible():
    code = "cases = [(1, 10), (2, 20)]\nfor n, want in cases:\n    assert f(n) == want\n"
    assert T.plan(code).counts()["hidden_checks"] == 2
    leaked = T.plan(code + "print(len(cases))\n")
    assert leaked.counts()["hidden_checks"] == 0 and leaked.counts()["visible_checks"] == 2
    assert T.plan("for i in range(3):\n    assert sq(i) == i * i\n").counts()["hidden_checks"] == 3


def test_case_tables_revealed_through_all_or_a_helper_make_their_answers_visible():
    """The sandbox receives every step at once, so answers taken from a table that a later
    step binds are visible, whether the checks came from `all(...)` or an inlined helper."""
    table = "CASES = [((2, 3), 5), ((10, 20), 30)]\n"
    through_all = table + "assert all(add(*args) == want for args, want in CASES)\n"
    through_helper = ("def check(candidate, cases):\n    for args, want in cases:\n        assert candidate(*args) == want\n"
                      + table + "check(add, CASES)\n")
    for code in (through_all, through_helper):
        assert T.plan(code).counts()["hidden_checks"] == 2, code
        leaked = T.plan(code + "print('checked', len(CASES))\n").counts()
        assert (leaked["hidden_checks"], leaked["visible_checks"]) == (0, 2), code


def test_type_of_an_answer_is_compared_on_the_host():
    """`type(E) == T` sends E, not a class (which cannot cross the wall), and compares the
    decoded value's type: guessable, as any value of type T passes."""
    plan = T.plan("assert type(add(2, 3)) == int\nassert type(add(2, 3)) is not float\nassert str == type(name())\n")
    assert [s["eval"] for s in plan.steps] == ["add(2, 3)", "add(2, 3)", "name()"]
    assert plan.counts()["guessable_checks"] == 3
    assert T.judge(plan, _answers(plan, [5, 5, "x"])) == (1.0, "pass")
    assert T.judge(plan, _answers(plan, [5.0, 5, "x"]))[1] == "wrong_answer (check 0)"
    assert T.judge(plan, _answers(plan, [True, 5, "x"]))[1] == "wrong_answer (check 0)"  # type(True) is bool, as in Python
    assert T.judge(plan, _answers(plan, [5, 5.0, "x"]))[1] == "wrong_answer (check 1)"


def test_approx_of_two_sandbox_values_is_a_visible_pair_judged_with_the_hosts_abs():
    """`abs(f(x) - ref(x)) < t` with no side foldable: both values come back and the host
    takes abs(a - b), so a solution shadowing `abs` gains nothing; counted as visible."""
    code = "def ref(xs):\n    return sum(xs) / len(xs)\nfor xs in [[1, 2, 3], [4, 5]]:\n    assert abs(mean(xs) - ref(xs)) < 1e-9\n"
    plan = T.plan(code)
    assert plan.counts()["visible_checks"] == 2 and plan.counts()["hidden_checks"] == 0
    evals = [s for s in plan.steps if "eval" in s]
    assert [s["eval"] for s in evals] == ["(mean(xs), ref(xs))"] * 2
    values = [None if "eval" not in s else v for s, v in zip(plan.steps, [None, (2.0, 2.0), (4.5, 4.5)])]
    assert T.judge(plan, _answers(plan, values)) == (1.0, "pass")
    values = [None if "eval" not in s else v for s, v in zip(plan.steps, [None, (0, 2.0), (4.5, 4.5)])]
    assert T.judge(plan, _answers(plan, values))[1] == "wrong_answer (check 0)"
