"""Tests of the `code` task (extraction, sandboxed scoring, JSONL loading) and the registry."""

import pytest

from verifiers import sandbox
from verifiers.tasks import TASKS, JSONL, PROCEDURAL
from verifiers.tasks import code as C
from verifiers.tasks.jsonl import JsonlError, write_jsonl

TESTS = "assert is_prime(2) is True\nassert is_prime(9) == False\nassert [p for p in range(20) if is_prime(p)] == [2, 3, 5, 7, 11, 13, 17, 19]\n"
GOOD = "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n"
LIM = sandbox.Limits(wall_s=8.0, cpu_s=4)


@pytest.mark.parametrize("completion,expected", [
    ("```python\nx = 1\n```", "x = 1\n"),
    ("Here:\n```py\na = 2\n```\nand better:\n```python\nb = 3\n```\n", "b = 3\n"),
    ("```\nc = 4\n```", "c = 4\n"),
    ("```python\nfirst = 1\n```\n```\nplain = 2\n```", "first = 1\n"),
    ("def f():\n    return 1\n", "def f():\n    return 1\n"),
])
def test_extract_code(completion, expected):
    assert C.extract_code(completion) == expected


@pytest.mark.parametrize("completion,reward,reason", [
    (f"Sure!\n```python\n{GOOD}```\nDone.", 1.0, "pass"),
    (GOOD, 1.0, "pass"),
    ("```python\ndef is_prime(n):\n    return n % 2 == 1\n```", 0.0, "wrong_answer"),
    ("```python\nimport sys\nsys.exit(0)\n```", 0.0, "error: solution: SystemExit"),
    ("```python\ndef is_prime(n:\n```", 0.0, "error: solution: SyntaxError"),
    ("```python\nclass T:\n    def __eq__(s, o):\n        return True\ndef is_prime(n):\n    return T()\n```", 0.0, "wrong_answer"),
])
def test_score_runs_the_code_in_the_sandbox(completion, reward, reason):
    r = C.score("Write is_prime.", {"tests": TESTS}, completion, LIM)
    assert r["reward"] == reward and r["reason"].startswith(reason), r
    assert r["mode"] == sandbox.sandbox_mode()
    assert (r["checks"], r["hidden_checks"], r["guessable_checks"]) == (3, 1, 2)
    assert r["rel_tol"] == 1e-9


def test_host_parsing_is_bounded_and_linear():
    """Length first, then one linear pass. The old regex took 4.3 s on 60,000 backticks and
    grew quadratically (~190 s at this size); the bound below is loose for busy machines
    and still catches anything quadratic."""
    import time
    n = C.MAX_COMPLETION_CHARS - 10
    t = time.perf_counter()
    for text in ("`" * n, "```" * (n // 3), "```python" + "\n```" * (n // 4 - 3), "``` \n" * (n // 5)):
        C.extract_code(text)
    assert time.perf_counter() - t < 10.0
    r = C.score("p", {"tests": TESTS}, "`" * (C.MAX_COMPLETION_CHARS + 1), LIM)
    assert r == {"reward": 0.0, "reason": "too_long"}


def test_data_tests_calls_and_stdio():
    calls = [{"call": "add", "args": [1, 2], "expect": 3}, {"call": "add", "args": [[1], [2]], "expect": [1, 2]},
             {"call": "add", "args": [0.1, 0.2], "kwargs": {}, "expect": 0.3}]
    good = "def add(a, b):\n    return a + b\n"
    assert C.score("p", {"tests": calls}, good, LIM)["reward"] == 1.0
    assert C.score("p", {"tests": calls}, "def add(a, b):\n    return 3\n", LIM)["reason"] == "wrong_answer (check 1)"
    io = [{"stdin": "1 2\n", "stdout": "3\n"}, {"stdin": "2.5 0.25\n", "stdout": "2.75"}]
    prog = "a, b = map(float, input().split())\ns = a + b\nprint(int(s) if s == int(s) else s)\n"
    r = C.score("p", {"tests": io}, prog, LIM)
    assert r["reward"] == 1.0 and r["hidden_checks"] == 2, r
    assert C.score("p", {"tests": io}, "print(3)\n", LIM)["reason"] == "wrong_answer (check 1)"
    assert C.score("p", {"tests": io}, "import sys\nprint(3)\nsys.exit(1)\n", LIM)["reward"] == 0.0


def test_unittest_tests_both_ways():
    """A plain TestCase is judged on the host; one with setUp runs in the sandbox (attested)."""
    plain = ("import unittest\nclass T(unittest.TestCase):\n    def test_a(self):\n        self.assertEqual(add(2, 3), 5)\n"
             "if __name__ == '__main__':\n    unittest.main()\n")
    stateful = ("import unittest\nclass T(unittest.TestCase):\n    def setUp(self):\n        self.x = 2\n"
                "    def test_a(self):\n        self.assertEqual(add(self.x, 3), 5)\nunittest.main()\n")
    good, bad = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return 0\n"
    r = C.score("p", {"tests": plain}, good, LIM)
    assert r["reward"] == 1.0 and r["hidden_checks"] == 1, r
    assert C.score("p", {"tests": plain}, bad, LIM)["reason"] == "wrong_answer (check 0)"
    r = C.score("p", {"tests": stateful}, good, LIM)
    assert r["reward"] == 1.0 and r["attested_asserts"] == 1 and r["checks"] == 0, r
    assert C.score("p", {"tests": stateful}, bad, LIM)["reason"].startswith("error: tests: AssertionError")


def test_score_limits_and_bad_input():
    r = C.score("p", {"tests": TESTS}, "x = '" + "a" * (C.MAX_CODE_CHARS + 1) + "'", LIM)
    assert r == {"reward": 0.0, "reason": "too_long"}
    for bad in ("assert (", 7, [], [{"stdin": "1"}]):
        assert C.score("p", {"tests": bad}, GOOD, LIM)["reason"].startswith("bad_tests")
    r = C.score("p", {"tests": TESTS}, "import time\ntime.sleep(30)\n",
                sandbox.Limits(wall_s=1.5))
    assert r["reward"] == 0.0 and r["reason"] == "timeout" and r["wall_s"] < 3.0


def test_load_code_jsonl(tmp_path):
    p = tmp_path / "c.jsonl"
    write_jsonl([{"prompt": "Write is_prime.", "tests": TESTS}], p)
    rows = C.load(p)
    assert rows[0]["meta"] == {"tests": TESTS} and rows[0]["id"].startswith("code-")
    assert C.score(rows[0]["prompt"], rows[0]["meta"], GOOD, LIM)["reward"] == 1.0
    write_jsonl([{"prompt": "a", "tests": "assert f(1) == 1"}, {"prompt": "b", "tests": "assert ("}], p)
    with pytest.raises(JsonlError, match="c.jsonl:2: tests do not parse"):
        C.load(p)
    write_jsonl([{"prompt": "a", "tests": [{"call": "f", "args": [1], "expect": 1.5}], "rel_tol": 0.01}], p)
    assert C.load(p)[0]["meta"]["rel_tol"] == 0.01
    write_jsonl([{"prompt": "a", "tests": [{"stdin": "1"}]}], p)
    with pytest.raises(JsonlError, match="c.jsonl:1: tests do not parse"):
        C.load(p)


def test_registry_names_versions_and_interfaces():
    assert set(TASKS) == {"arith", "countdown", "math", "code"}
    for name, mod in TASKS.items():
        assert isinstance(mod.VERSION, str) and mod.VERSION.startswith(name)
        assert callable(mod.score)
    for name in PROCEDURAL:
        rows = TASKS[name].generate(0, 3, "train")
        assert len(rows) == 3 and set(rows[0]) == {"id", "prompt", "meta"}
        assert TASKS[name].score(rows[0]["prompt"], rows[0]["meta"], rows[0]["meta"]["solution"])["reward"] == 1.0
    for name in JSONL:
        assert callable(TASKS[name].load)
    with pytest.raises(KeyError, match="unknown task"):
        TASKS["chess"]
