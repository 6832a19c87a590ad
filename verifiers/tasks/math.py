"""The `math` task: JSONL rows {"prompt", "answer"} (GSM8K / MATH style), math-verify scoring.

Answer extraction (`extract_answer`), first that applies:
  1. the content of the LAST `\\boxed{...}` (balanced braces; also `\\boxed x`);
  2. the rest of the line after the LAST `#### ` (GSM8K; commas between digits, `$` and a
     final `.` removed);
  3. the last match of meta["pattern"] (a regex; group 1 if it has one, else the match),
     searched in the completion's last PATTERN_WINDOW characters only.
A completion over MAX_COMPLETION_CHARS is "too_long" before anything scans it.
The extracted answer (at most MAX_ANSWER_CHARS, else reason "too_long") and the gold are
normalised (math_answer.normalise: `\\$`, `\\,`, a closing period, units, digit groups).
Then:
  * a NUMERIC reference (integer, decimal, fraction) needs a number written out: not an
    expression that evaluates to it (the question's own `1663 - 5242 - 9376` scores 0),
    fractions in lowest terms; compared exactly, or with the per-task tolerance where a
    decimal is involved (math_answer.judge_number);
  * any other reference is compared with math-verify (`parse`, `verify`); an answer that
    is an equation where the reference is not is refused (`\\boxed{wrong = right}`).
Every verdict records `rel_tol`/`abs_tol` (the `[task]` setting, or the row's own).
math-verify's timeouts use signal.alarm: `score` therefore must run in the MAIN THREAD of
its process (it raises RuntimeError elsewhere); the verifier's scorer workers do.
A bare final number (e.g. "... so she has 12 apples.") is NOT taken as the answer: with
neither `\\boxed{}` nor `####` (nor a matching meta["pattern"]) the reward is 0 with
reason "no_answer". Prompt the model to end with `#### x` or `\\boxed{x}`, or give rows a
"pattern" such as `(-?\\d+)\\s*$` to accept one.

`MathPool` runs `score` in separate worker processes (`python -m verifiers.tasks.math
--serve`, JSON lines over pipes, no pickle) with a per-job wall timeout: a job that
overruns (e.g. a C-level computation an alarm cannot interrupt) gets reward 0 with reason
"timeout", its worker is SIGKILLed and replaced, and other jobs on other workers go on.

Does NOT: generate problems (JSONL only), or look at the reasoning, only the final answer.
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import select
import signal
import subprocess
import sys
import threading
import time

from verifiers.tasks.math_answer import (equation_problem, judge_number, normalise,
                                         parse_number)

VERSION = "math-2"
NAME = "math"
SETTINGS = ("rel_tol", "abs_tol")
DEFAULT_REL_TOL = 1e-9        # numbers with a decimal compare with math.isclose(rel_tol, abs_tol)
DEFAULT_ABS_TOL = 0.0
MAX_ANSWER_CHARS = 512        # a longer extracted answer is "too_long" (never parsed)
MAX_COMPLETION_CHARS = 400_000  # a longer completion is "too_long" before any scanning
PATTERN_WINDOW = 4096         # a row's pattern only sees the completion's last characters
PARSE_TIMEOUT_S = 2           # math-verify parse timeout per expression (alarm, int s)
VERIFY_TIMEOUT_S = 3          # math-verify verify timeout (alarm, int s)
POOL_JOB_TIMEOUT_S = 10.0     # MathPool wall timeout per job, worker start excluded
POOL_START_TIMEOUT_S = 120.0  # how long a new worker may take to import math-verify


def _boxed(text: str) -> str | None:
    i = text.rfind("\\boxed")
    if i < 0:
        return None
    j = i + len("\\boxed")
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        depth, k, stop = 0, j, min(len(text), j + MAX_ANSWER_CHARS + 2)
        while k < stop:                      # bounded scan: 1 MB answers cost nothing
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            if depth == 0:
                return text[j + 1:k].strip()
            k += 1
        return text[j + 1:stop] if stop < len(text) else None   # too long / unbalanced
    m = re.match(r"[^\s$]+", text[j:])
    return m.group(0) if m else None


def extract_answer(completion: str, pattern: str | None = None) -> str | None:
    """The final answer written in `completion`, or None (see module docstring)."""
    boxed = _boxed(completion)
    if boxed is not None:
        return boxed
    i = completion.rfind("####")
    if i >= 0:
        line = completion[i + 4:i + 4 + 4 * MAX_ANSWER_CHARS].split("\n", 1)[0].strip()
        line = re.sub(r"(?<=\d),(?=\d)", "", line).replace("$", "").rstrip(".").strip()
        return line or None
    if pattern:
        matches = list(re.finditer(pattern, completion[-PATTERN_WINDOW:]))
        if matches:
            m = matches[-1]
            return (m.group(1) if m.re.groups else m.group(0)).strip()
    return None


def _mv():
    import math_verify   # imported lazily: sympy + antlr take ~1 s
    import math_verify.errors
    return math_verify


def _math_expr(s: str) -> str:
    return s if "$" in s or "\\boxed" in s else f"${s}$"


def score(prompt: str, meta: dict, completion: str, rel_tol: float = DEFAULT_REL_TOL,
          abs_tol: float = DEFAULT_ABS_TOL) -> dict:
    """{"reward", "reason", "extracted", "rel_tol", "abs_tol"}; main thread only (math-verify
    uses SIGALRM)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("math.score must run in a process's main thread "
                           "(math-verify times out with signal.alarm); use MathPool")
    tol = {"rel_tol": float(meta.get("rel_tol", rel_tol)), "abs_tol": float(meta.get("abs_tol", abs_tol))}
    out = _score(meta, completion, tol)
    return {**out, **tol}


def _score(meta: dict, completion, tol: dict) -> dict:
    if not isinstance(completion, str):
        return {"reward": 0.0, "reason": "completion is not text", "extracted": None}
    if len(completion) > MAX_COMPLETION_CHARS:
        return {"reward": 0.0, "reason": "too_long", "extracted": None}
    try:
        answer = extract_answer(completion, meta.get("pattern"))
    except re.error as e:
        return {"reward": 0.0, "reason": f"bad pattern: {e}", "extracted": None}
    if answer is None:
        return {"reward": 0.0, "reason": "no_answer", "extracted": None}
    if len(answer) > MAX_ANSWER_CHARS:
        return {"reward": 0.0, "reason": "too_long", "extracted": answer[:64]}
    ans, gold = normalise(answer), normalise(str(meta["answer"]))
    number = parse_number(gold)
    if number is not None:
        ok, reason = judge_number(ans, number[0], number[1], tol["rel_tol"], tol["abs_tol"])
        return {"reward": 1.0 if ok else 0.0, "reason": reason, "extracted": answer}
    refused = equation_problem(ans, gold)
    if refused:
        return {"reward": 0.0, "reason": refused, "extracted": answer}
    return _math_verify(gold, ans, answer, tol)


def _math_verify(gold_text: str, ans: str, answer: str, tol: dict) -> dict:
    """Symbolic comparison by math-verify; float_rounding follows rel_tol (>= 6 digits)."""
    mv = _mv()
    digits = max(6, min(15, math.ceil(-math.log10(tol["rel_tol"])))) if tol["rel_tol"] > 0 else 15
    try:
        gold = mv.parse(_math_expr(gold_text), parsing_timeout=PARSE_TIMEOUT_S, raise_on_error=True)
        pred = mv.parse(_math_expr(ans), parsing_timeout=PARSE_TIMEOUT_S, raise_on_error=True)
        if not gold:
            return {"reward": 0.0, "reason": "gold answer does not parse", "extracted": answer}
        if not pred:
            return {"reward": 0.0, "reason": "answer does not parse", "extracted": answer}
        ok = mv.verify(gold, pred, float_rounding=digits, timeout_seconds=VERIFY_TIMEOUT_S,
                       raise_on_error=True)
    except mv.errors.TimeoutException:   # a BaseException: SIGALRM fired in math-verify
        return {"reward": 0.0, "reason": "timeout", "extracted": answer}
    except Exception as e:      # fault policy: math-verify errors are reward 0
        return {"reward": 0.0, "reason": f"error: {type(e).__name__}", "extracted": answer}
    return {"reward": 1.0 if ok else 0.0, "reason": "correct" if ok else "wrong_answer",
            "extracted": answer}


def load(path, pattern: str | None = None, *, prompt_field: str = "", answer_field: str = "",
         with_report: bool = False):
    """Rows {"id", "prompt", "meta": {"answer"[, "solution", "pattern", "rel_tol", "abs_tol"]}} of a user's JSONL:
    GSM8K {"question", "answer": "... #### x"}, MATH {"problem", "solution": "... \\boxed{x}"} or
    {"prompt", "answer"}, through the field mapping of verifiers/tasks/fields.py (duplicate
    prompts merged and counted; errors name file:line). with_report: (rows, Report)."""
    from verifiers.tasks.fields import read_rows

    def extra(raw: dict, where: str) -> dict:  # a row's own pattern and tolerances travel in meta
        p = pattern or raw.get("pattern")
        return {**({"pattern": p} if p else {}), **{k: raw[k] for k in SETTINGS if k in raw}}

    rows, report = read_rows(path, NAME, prompt_field=prompt_field, answer_field=answer_field, row_meta=extra)
    return (rows, report) if with_report else rows


class _Worker:
    """One `--serve` process; JSON lines in, JSON lines out (own line buffer, no pickle)."""

    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-m", "verifiers.tasks.math", "--serve"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  start_new_session=True)
        self.buf = bytearray()
        self.ready = False

    def send(self, obj: dict) -> None:
        self.p.stdin.write(json.dumps(obj).encode() + b"\n")
        self.p.stdin.flush()

    def readline(self, timeout_s: float) -> bytes | None:
        """The next line; None on timeout or if the worker died."""
        deadline = time.monotonic() + timeout_s
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        for f in (self.p.stdin, self.p.stdout):
            f.close()


class MathPool:
    """`workers` scoring processes; `score` is thread-safe and returns within `timeout_s`
    (plus, on a freshly started worker, up to POOL_START_TIMEOUT_S for its imports)."""

    def __init__(self, workers: int = 2, timeout_s: float = POOL_JOB_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(workers):
            self.idle.put(_Worker())

    def score(self, prompt: str, meta: dict, completion: str) -> dict:
        w = self.idle.get()
        try:
            if not w.ready:
                if w.readline(POOL_START_TIMEOUT_S) != b"ready":
                    w = self._replace(w)
                    return {"reward": 0.0, "reason": "worker_failed_to_start", "extracted": None}
                w.ready = True
            try:
                w.send({"prompt": prompt, "meta": meta, "completion": completion})
            except BrokenPipeError:
                w = self._replace(w)
                return {"reward": 0.0, "reason": "worker_died", "extracted": None}
            line = w.readline(self.timeout_s)
            if line is None:           # fault policy: overrun or crash -> reward 0, new worker
                alive = w.p.poll() is None
                w = self._replace(w)
                return {"reward": 0.0, "reason": "timeout" if alive else "worker_died",
                        "extracted": None}
            return json.loads(line)
        finally:
            self.idle.put(w)

    @staticmethod
    def _replace(w: _Worker) -> _Worker:
        w.kill()
        return _Worker()

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get().kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _serve():
    _mv()
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        print(json.dumps(score(job["prompt"], job["meta"], job["completion"])), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
