"""The `code` task: JSONL rows {"prompt", "tests"}; reward 1 iff every test answer is right.

`tests` is Python assert code (a string) or a list of data cases ({"call", "args",
"kwargs", "expect"} or {"stdin", "stdout"}); see verifiers/sandbox_tests.py. The
completion's code (`extract_code`) is the last ```python (or ```py / ```python3) fenced
block, else the last ``` fenced block, else the whole completion. It runs in the sandbox
with `verifiers.sandbox.run_tests`: the expected answers stay on the host, which compares
the sandbox's answers with them (see verifiers/sandbox.py for the threat model).

Host-side parsing is bounded before any scanning: a completion over MAX_COMPLETION_CHARS
scores 0 ("too_long") untouched, and fence extraction is one linear pass (str.find; no
regex that can backtrack).

Settings (the verifier passes them from the config; `SETTINGS`): `rel_tol`, `abs_tol`
(numeric tolerance, per row overridable in meta, recorded in every verdict) and
`accept_weak_sandbox`.

Does NOT: generate problems, give partial credit, or run anything from the tests on the
host (tests are parsed there only to plan the checks).
"""

from __future__ import annotations

from verifiers import sandbox
from verifiers.sandbox_plan import DEFAULT_ABS_TOL, DEFAULT_REL_TOL, PlanError
from verifiers.sandbox_tests import plan as plan_tests

VERSION = "code-2"
NAME = "code"
SETTINGS = ("rel_tol", "abs_tol", "accept_weak_sandbox")
LIMITS = sandbox.Limits(wall_s=10.0, cpu_s=5, address_space_bytes=1 << 30, nproc=32)
MAX_COMPLETION_CHARS = 400_000   # longer completions score 0 without being scanned
MAX_CODE_CHARS = 200_000         # longer extracted code scores 0 without running
MAX_LANG_CHARS = 32              # a fence's language tag is read from this many characters
PYTHON_TAGS = ("python", "py", "python3")
FENCE = "```"


def _fences(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of every ``` fenced block, in one left-to-right pass."""
    blocks, pos = [], 0
    while (i := text.find(FENCE, pos)) >= 0:
        nl = text.find("\n", i + 3)
        if nl < 0:
            break
        j = text.find(FENCE, nl + 1)
        if j < 0:
            break
        info = text[i + 3:min(nl, i + 3 + MAX_LANG_CHARS)]
        n = 0
        while n < len(info) and (info[n].isascii() and (info[n].isalnum() or info[n] in "_+-")):
            n += 1
        blocks.append((info[:n], text[nl + 1:j]))
        pos = j + 3
    return blocks


def extract_code(completion: str) -> str:
    """Code from a completion: last python fence, else last fence, else the raw text."""
    blocks = _fences(completion)
    py = [body for lang, body in blocks if lang.lower() in PYTHON_TAGS]
    if py:
        return py[-1]
    if blocks:
        return blocks[-1][1]
    return completion


def score(prompt: str, meta: dict, completion: str, limits: sandbox.Limits = LIMITS,
          rel_tol: float = DEFAULT_REL_TOL, abs_tol: float = DEFAULT_ABS_TOL,
          accept_weak_sandbox: bool = False) -> dict:
    """{"reward", "reason", "mode", "hardening", check counts, "rel_tol", "abs_tol", "wall_s"}."""
    if not isinstance(completion, str):
        return {"reward": 0.0, "reason": "completion is not text"}
    if len(completion) > MAX_COMPLETION_CHARS:
        return {"reward": 0.0, "reason": "too_long"}
    code = extract_code(completion)
    if len(code) > MAX_CODE_CHARS:
        return {"reward": 0.0, "reason": "too_long"}
    rel_tol = float(meta.get("rel_tol", rel_tol))
    abs_tol = float(meta.get("abs_tol", abs_tol))
    try:
        plan_tests(meta.get("tests"))
    except (SyntaxError, PlanError) as e:     # fault policy: the row's fault, reward 0, named
        return {"reward": 0.0, "reason": f"bad_tests: {e}"[:200]}
    r = sandbox.run_tests(code, meta["tests"], limits, rel_tol=rel_tol, abs_tol=abs_tol,
                          accept_weak=accept_weak_sandbox)
    keep = ("reward", "reason", "mode", "hardening", "checks", "hidden_checks", "visible_checks",
            "guessable_checks", "attested_asserts", "rel_tol", "abs_tol", "oom_killed", "wall_s")
    return {k: r[k] for k in keep}


def load(path, *, prompt_field: str = "", answer_field: str = "", with_report: bool = False):
    """Rows {"id", "prompt", "meta": {"tests"[, "rel_tol", "abs_tol"]}} of a {"prompt", "tests"}
    JSONL (field mapping, duplicate merging and file:line errors of verifiers/tasks/fields.py);
    every row's tests must plan (parse, known format). with_report: (rows, Report)."""
    from verifiers.tasks.fields import DataError, field_value, read_rows

    def check(raw: dict, where: str) -> dict:
        tests = field_value(raw, answer_field or "tests")
        if not isinstance(tests, (str, list)):
            raise DataError(f"{where}: tests must be a string or a list, got {type(tests).__name__}")
        try:
            plan_tests(tests)
        except (SyntaxError, PlanError) as e:
            raise DataError(f"{where}: tests do not parse: {e}") from None
        meta = {}
        for key in ("rel_tol", "abs_tol"):
            if key in raw:
                if not isinstance(raw[key], (int, float)) or isinstance(raw[key], bool) or not 0 <= raw[key] <= 1:
                    raise DataError(f"{where}: {key} must be a number in [0, 1]")
                meta[key] = float(raw[key])
        return meta

    rows, report = read_rows(path, NAME, target="tests", prompt_field=prompt_field, answer_field=answer_field,
                             row_meta=check)
    return (rows, report) if with_report else rows
