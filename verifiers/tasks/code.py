"""The `code` task: JSONL rows {"prompt", "tests"} (Python); reward 1 iff all tests pass.

The completion's code (`extract_code`) is the last ```python (or ```py) fenced block, else
the last ``` fenced block, else the whole completion. It runs in the sandbox against the
row's tests with `verifiers.sandbox.run_tests` (fresh process, namespaces, rlimits, a
per-run nonce, hidden expected values for `assert f(x) == literal` checks; see
verifiers/sandbox.py for the guarantees and what is not covered).

Does NOT: generate problems, give partial credit, or import anything from the tests into
the host (tests are parsed on the host only to rewrite their asserts).
"""

from __future__ import annotations

import hashlib
import re

from verifiers import sandbox

VERSION = "code-1"
NAME = "code"
LIMITS = sandbox.Limits(wall_s=10.0, cpu_s=5, address_space_bytes=1 << 30, nproc=32)
MAX_CODE_CHARS = 200_000       # longer completions score 0 without running

_FENCE = re.compile(r"```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)


def extract_code(completion: str) -> str:
    """Code from a completion: last python fence, else last fence, else the raw text."""
    blocks = _FENCE.findall(completion)
    py = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if py:
        return py[-1]
    if blocks:
        return blocks[-1][1]
    return completion


def score(prompt: str, meta: dict, completion: str, limits: sandbox.Limits = LIMITS) -> dict:
    """{"reward", "reason", "mode", "hidden_checks", "wall_s"} from one sandboxed run."""
    if not isinstance(completion, str):
        return {"reward": 0.0, "reason": "completion is not text"}
    code = extract_code(completion)
    if len(code) > MAX_CODE_CHARS:
        return {"reward": 0.0, "reason": "too_long"}
    r = sandbox.run_tests(code, meta["tests"], limits)
    return {k: r[k] for k in ("reward", "reason", "mode", "hidden_checks", "wall_s")}


def load(path) -> list[dict]:
    """Rows {"id", "prompt", "meta": {"tests"}}; every row's tests must parse."""
    from verifiers.tasks.jsonl import JsonlError, read_jsonl
    rows = []
    for i, r in enumerate(read_jsonl(path, {"prompt": str, "tests": str})):
        try:
            sandbox.plan_tests(r["tests"])
        except SyntaxError as e:
            raise JsonlError(f"{path}: row {i + 1}: tests do not parse: {e}") from None
        rows.append({"id": r.get("id") or "code-" + hashlib.sha1(r["prompt"].encode()).hexdigest()[:12],
                     "prompt": r["prompt"], "meta": {"tests": r["tests"]}})
    return rows
