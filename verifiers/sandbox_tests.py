"""Host side of a code verdict: trusted tests -> steps for the sandbox + checks kept here.

The sandbox never sees an expected answer it is compared against. `plan(tests)` turns the
trusted tests into a `Plan`: `steps` (sent to the sandbox: expressions to evaluate, setup
to run, stdin texts) and `checks` (kept on the host: for each evaluated expression, the
comparison and the expected value). `judge(plan, report)` compares the sandbox's answers,
one per step and in order, with the checks (sandbox_verdict.satisfied).

Test formats:
  * data, function calls: [{"call": "add", "args": [1, 2], "kwargs": {}, "expect": 3}, ...]
    (`call` is an expression naming the callable; lists and tuples compare alike here);
  * data, stdin/stdout: [{"stdin": "1 2\\n", "stdout": "3\\n"}, ...] — the program runs
    once per case in a fresh process; outputs compare token by token (numbers with a
    decimal point or exponent within the tolerance, all else exactly); exit status 0;
  * Python asserts (str), converted statically by `_Converter` — never run on the host:
    literal assignments, `for` loops over literal data and `if`s on literal conditions are
    folded here (`_fold`, a small evaluator of literals and pure builtins); HumanEval-style
    `def check(candidate): ...` + `check(f)` is inlined; each `assert` becomes a check:
      - hidden: `E == X`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `abs(E - X) < t`,
        `math.isclose(E, X, ...)` with X foldable here: E is evaluated in the sandbox, X
        never leaves the host (unless the tests themselves hand the variable X holds, or
        the data it was taken from, to the sandbox, in any later step too, since the
        sandbox receives all steps at once: then it counts as visible);
      - visible: both sides computed in the sandbox (`f(x) == g(x)`), compared here;
      - guessable: `E is None/True/False`, `assert E`, `assert not E`, `type(E) == T`
        (T a builtin type; E's decoded value has type T): compared here, but a constant
        answer passes them;
      - attested: statements that cannot be converted (while loops, try, class bodies,
        helper functions that assert) run inside the sandbox as setup steps; an assert in
        them is only the solution's word. `attested_asserts` counts them.
    Every verdict reports the four counts.

Does NOT: execute test code on the host, or accept a verdict from the sandbox.
"""
from __future__ import annotations

import ast
import math

from verifiers.sandbox_convert import Converter
from verifiers.sandbox_plan import (DEFAULT_ABS_TOL, DEFAULT_REL_TOL, MAX_TESTS_CHARS, Plan,
                                    PlanError)
from verifiers.sandbox_verdict import (Unencodable, decode_records, decode_value,
                                       encode_value, numbers_match, satisfied)

def plan(tests, rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = DEFAULT_ABS_TOL) -> Plan:
    """The plan for `tests` (Python assert code or a list of data cases); raises PlanError
    (SyntaxError for code that does not parse)."""
    tol = {"rel_tol": float(rel_tol), "abs_tol": float(abs_tol)}
    if isinstance(tests, str):
        if len(tests) > MAX_TESTS_CHARS:
            raise PlanError(f"tests longer than {MAX_TESTS_CHARS} characters")
        return Converter(tol).run(tests)
    if isinstance(tests, list) and tests and all(isinstance(t, dict) for t in tests):
        return _data_plan(tests, tol)
    raise PlanError("tests must be Python assert code (a string) or a non-empty list of "
                    "{call, args, kwargs, expect} or {stdin, stdout} objects")


def _data_plan(cases: list[dict], tol: dict) -> Plan:
    if all(set(c) == {"stdin", "stdout"} for c in cases):
        if not all(isinstance(c["stdin"], str) and isinstance(c["stdout"], str) for c in cases):
            raise PlanError("stdin/stdout cases need string values")
        checks = {i: {"op": "stdout", "expected": c["stdout"], "strength": "hidden", **tol}
                  for i, c in enumerate(cases)}
        return Plan("io", [{"stdin": c["stdin"]} for c in cases], checks)
    steps, checks = [], {}
    for i, c in enumerate(cases):
        if not {"call", "expect"} <= set(c) <= {"call", "args", "kwargs", "expect"}:
            raise PlanError(f"case {i}: expected keys call, args, kwargs, expect; got {sorted(c)}")
        args, kwargs = c.get("args", []), c.get("kwargs", {})
        if not isinstance(c["call"], str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            raise PlanError(f"case {i}: call must be a string, args a list, kwargs an object")
        try:
            ast.parse(c["call"], mode="eval")
        except SyntaxError:
            raise PlanError(f"case {i}: call {c['call'][:80]!r} is not an expression") from None
        steps.append({"eval": f"({c['call']})(*__scca_args, **__scca_kwargs)",
                      "bind": {"__scca_args": encode_value(args), "__scca_kwargs": encode_value(kwargs)}})
        checks[i] = {"op": "eq", "expected": c["expect"], "strength": "hidden", "loose_seq": True, **tol}
    return Plan("tests", steps, checks)


# ------------------------------------------------------------------------------ judging

def stdout_match(out: str, expected: str, rel_tol: float, abs_tol: float) -> bool:
    """Token-wise: exact, or numerically within tolerance where the expected token is a
    number written with a decimal point or exponent."""
    got, want = out.split(), expected.split()
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        if not any(ch in w for ch in ".eE") or len(g) > 400 or len(w) > 400:
            return False
        try:
            if not numbers_match(float(g), float(w), rel_tol, abs_tol) or math.isnan(float(g)):
                return False
        except ValueError:
            return False
    return True


def _check_one(spec: dict, r: dict) -> bool:
    """Host-side comparison of one answer record with its check spec."""
    if spec["op"] == "stdout":
        return (type(r.get("out")) is str and r.get("rc") == 0
                and stdout_match(r["out"], spec["expected"], spec["rel_tol"], spec["abs_tol"]))
    if "v" not in r:
        return False
    value = decode_value(r["v"])
    if isinstance(value, Unencodable):
        return False
    return satisfied(spec, value, spec.get("expected"))


def judge(plan: Plan, report: dict | None) -> tuple[float, str]:
    """(reward, reason): 1.0/"pass" iff every step answered in order and every check holds."""
    if plan.const_fail:
        return 0.0, "tests assert a false constant"
    if not plan.checks and not plan.attested:
        return 0.0, "no_checks (the tests compare nothing)"
    if report is None:
        return 0.0, "no_report"
    if report["over"]:
        return 0.0, "result_limit"
    try:
        records = decode_records(report["raw"], len(plan.steps) + 2)
    except ValueError as e:
        return 0.0, f"bad_record ({e})"
    order = {i: k for k, i in enumerate(sorted(plan.checks))}
    done, n = False, 0
    for r in records:
        if done:
            return 0.0, "bad_record (after done)"
        if r.get("done") is True:
            done = True
            continue
        if r.get("stage") == "solution":
            return 0.0, f"error: solution: {str(r.get('exc'))[:80]}"
        if r.get("i") != n or n >= len(plan.steps):
            return 0.0, f"bad_record (step {n})"
        if "exc" in r:
            return 0.0, f"error: tests: {str(r['exc'])[:80]} (step {n})"
        spec = plan.checks.get(n)
        try:
            ok = _check_one(spec, r) if spec else r.get("ok") == 1
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RecursionError):
            return 0.0, f"bad_record (step {n})"  # an answer the host cannot judge is no answer
        if not ok:
            return 0.0, f"wrong_answer (check {order[n]})" if spec else f"bad_record (step {n})"
        n += 1
    if n < len(plan.steps) or not done:
        return 0.0, f"tests_not_finished (step {n})"
    if not report["clean"]:
        return 0.0, "cleanup_failed"
    return 1.0, "pass"
