"""Tests of the `math` task (extraction, math-verify scoring, timeouts, MathPool) and of
the generic JSONL reader/writer."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from verifiers.tasks import jsonl
from verifiers.tasks import math as M


@pytest.mark.parametrize("completion,expected", [
    ("so \\boxed{72}.", "72"),
    ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{{a}+{b}}", "{a}+{b}"),
    ("\\boxed 5 is it", "5"),
    ("\\boxed{unbalanced", None),
    ("work\n#### 1,234.", "1234"),
    ("#### $18\nmore text", "18"),
    ("no answer here", None),
])
def test_extract_answer(completion, expected):
    assert M.extract_answer(completion) == expected


def test_extract_with_configured_pattern():
    assert M.extract_answer("Answer: 12 ... Answer: 13", r"Answer:\s*(\d+)") == "13"
    assert M.extract_answer("x = 4", r"\d+") == "4"
    assert M.extract_answer("\\boxed{9} Answer: 3", r"Answer:\s*(\d+)") == "9"  # boxed first


@pytest.mark.parametrize("gold,completion,reward", [
    ("72", "The answer is \\boxed{72}", 1.0),
    ("72", "The answer is \\boxed{73}", 0.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{2}{4}}", 0.0),     # not in lowest terms
    ("0.5", "#### 1/2", 1.0),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", 1.0),
    ("18", "Janet makes 9 * 2 = 18 dollars.\n#### 18", 1.0),
    ("18", "Janet makes 18 dollars.\n#### 19", 0.0),
])
def test_score_with_math_verify(gold, completion, reward):
    r = M.score("q", {"answer": gold}, completion)
    assert r["reward"] == reward, r


@pytest.mark.parametrize("gold,completion,reason", [
    ("-12955", "\\boxed{1663 - 5242 - 9376}", "not_a_number"),        # the question's expression
    ("-12955", "\\boxed{-12955 + 0}", "not_a_number"),
    ("138/583", "\\boxed{13524/57134}", "fraction_not_reduced"),       # the question's fraction
    ("4", "\\boxed{8/2}", "fraction_not_reduced"),
    ("5", "\\boxed{7 = 5}", "not_a_number"),
    ("x^2+1", "\\boxed{x^2 = x^2+1}", "equation_answer"),             # only the RHS would match
    ("\\frac{1}{3}", "\\boxed{0.333333}", "wrong_answer"),           # 6 decimals for a fraction
    ("6.32098837209", "\\boxed{6.32098837}", "wrong_answer"),         # with the row's rel_tol 1e-12
])
def test_answers_that_are_not_answers_score_zero(gold, completion, reason):
    r = M.score("q", {"answer": gold, "rel_tol": 1e-12}, completion)
    assert r["reward"] == 0.0 and r["reason"].startswith(reason), r
    assert r["rel_tol"] == 1e-12


@pytest.mark.parametrize("gold,completion", [
    ("44", "\\boxed{\\$44}"), ("28080", "\\boxed{28\\,080}"), ("28080", "\\boxed{28,080}"),
    ("-12955", "\\boxed{-12955}."), ("-12955", "the answer is \\boxed{\u221212955}"),
    ("$244/607$", "\\boxed{\\frac{244}{607}}"), ("138/583", "\\boxed{138/583.}"),
    ("0.5", "\\boxed{\\frac{1}{2}}"), ("-\\frac{3}{4}", "\\boxed{\\frac{-3}{4}}"), ("3", "\\boxed{3.0}"),
    ("12", "\\boxed{x = 12}"), ("90", "\\boxed{90^\\circ}"), ("15", "\\boxed{15 \\text{ apples}}"),
])
def test_equivalent_forms_are_accepted(gold, completion):
    r = M.score("q", {"answer": gold}, completion)
    assert r["reward"] == 1.0, r


def test_row_pattern_final_period_is_normalised():
    r = M.score("q", {"answer": "138/583", "pattern": r"Answer: (\S+)"}, "Answer: 138/583.")
    assert r["reward"] == 1.0 and r["extracted"] == "138/583.", r


def test_no_answer_and_bad_pattern():
    assert M.score("q", {"answer": "1"}, "I think it is one")["reason"] == "no_answer"
    assert M.score("q", {"answer": "1", "pattern": "("}, "x")["reason"].startswith("bad pattern")


def test_pathological_answers_get_a_verdict_within_their_timeout():
    one_mb = "\\boxed{" + "x+" * 500_000 + "1}"
    t = time.monotonic()
    r = M.score("q", {"answer": "5"}, one_mb)
    assert r == {"reward": 0.0, "reason": "too_long", "extracted": r["extracted"], "rel_tol": 1e-9, "abs_tol": 0.0}
    assert M.score("q", {"answer": "5"}, "\\frac{1}{2}" * 30_000)["reason"] == "no_answer"
    assert M.score("q", {"answer": "5"}, "#### " + "9" * 300_000)["reason"] == "too_long"
    assert M.score("q", {"answer": "5"}, "x" * (M.MAX_COMPLETION_CHARS + 1))["reason"] == "too_long"
    far = {"answer": "5", "pattern": r"Answer: (\d+)"}
    assert M.score("q", far, "Answer: 5" + "x" * M.PATTERN_WINDOW)["reason"] == "no_answer"   # window
    assert M.score("q", far, "x" * 300_000 + "Answer: 5")["reward"] == 1.0
    assert time.monotonic() - t < 1.0
    t = time.monotonic()
    r = M.score("q", {"answer": "5"}, "\\boxed{9^{9^{9^{9}}}}")
    assert r["reward"] == 0.0 and r["reason"].startswith("not_a_number"), r
    r = M.score("q", {"answer": "x+1"}, "\\boxed{9^{9^{9^{9}}}}")
    assert r["reward"] == 0.0 and r["reason"] in ("timeout", "wrong_answer"), r
    assert time.monotonic() - t < M.PARSE_TIMEOUT_S * 2 + M.VERIFY_TIMEOUT_S + 2.0
    r = M.score("q", {"answer": "5"}, "\\boxed{9**9**9**9}")
    assert r["reward"] == 0.0


def test_score_refuses_to_run_off_the_main_thread():
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("e", _catch(M.score, "q", {"answer": "1"}, "\\boxed{1}")))
    t.start()
    t.join()
    assert isinstance(out["e"], RuntimeError)


def _catch(f, *a):
    try:
        f(*a)
    except Exception as e:
        return e


def test_pool_times_out_a_stuck_job_without_blocking_others():
    """One worker overruns (verify takes ~VERIFY_TIMEOUT_S > the pool's 1.5 s); the other
    keeps answering; the overrun worker is replaced and answers again."""
    with M.MathPool(workers=2, timeout_s=1.5) as pool:
        assert pool.score("q", {"answer": "2"}, "\\boxed{2}")["reward"] == 1.0   # warm one
        with ThreadPoolExecutor(2) as ex:
            slow = ex.submit(pool.score, "q", {"answer": "x+1"}, "\\boxed{9^{9^{9^{9}}}}")
            time.sleep(0.05)
            t = time.monotonic()
            fast = [pool.score("q", {"answer": str(i)}, f"\\boxed{{{i}}}") for i in range(3)]
            fast_s = time.monotonic() - t
            slow_r = slow.result()
        assert slow_r["reward"] == 0.0 and slow_r["reason"] == "timeout", slow_r
        assert [r["reward"] for r in fast] == [1.0, 1.0, 1.0]
        assert fast_s < 30.0       # served by the other worker (start-up of it included)
        assert pool.score("q", {"answer": "3"}, "\\boxed{3}")["reward"] == 1.0


def test_load_math_jsonl(tmp_path):
    p = tmp_path / "m.jsonl"
    jsonl.write_jsonl([{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?", "answer": 4}], p)
    rows = M.load(p)
    assert [r["meta"]["answer"] for r in rows] == ["2", "4"]
    assert rows[0]["id"].startswith("math-") and rows[0]["id"] != rows[1]["id"]
    assert M.load(p, pattern=r"(\d+)")[0]["meta"]["pattern"] == r"(\d+)"


def test_jsonl_round_trip_and_errors_name_the_line(tmp_path):
    p = tmp_path / "sub" / "rows.jsonl"
    rows = [{"prompt": "é", "n": 1}, {"prompt": "b", "n": 2}]
    assert jsonl.write_jsonl(rows, p) == 2
    assert jsonl.read_jsonl(p, {"prompt": str}) == rows
    bad = tmp_path / "bad.jsonl"
    for text, msg in [('{"prompt": "a"}\n\n{"prompt": 3}\n', "bad.jsonl:3: key 'prompt' has type int"),
                      ('{"prompt": "a"}\n{oops\n', "bad.jsonl:2: not valid JSON"),
                      ('[1, 2]\n', "bad.jsonl:1: expected a JSON object"),
                      ('{"answer": "1"}\n', "bad.jsonl:1: missing key 'prompt'"),
                      ('{"prompt": true}\n', "bad.jsonl:1: key 'prompt' has type bool")]:
        bad.write_text(text)
        with pytest.raises(jsonl.JsonlError, match=msg):
            jsonl.read_jsonl(bad, {"prompt": str})
    bad.write_text('{"prompt": "a", "answer": true}\n')
    with pytest.raises(jsonl.JsonlError, match="answer"):
        jsonl.read_jsonl(bad, {"prompt": str, "answer": (str, int)})
    assert json.loads(p.read_text().splitlines()[0]) == rows[0]
