"""Verifier throughput: verdicts/s per worker for arith, math and code, 1 vs 2 workers.

Usage: python bench/verifiers.py [--seconds S] [--tasks arith,math,code] [--json OUT]

Each worker is a separate process (`--worker TASK SECONDS`, JSON result on stdout; no
pickle) that warms up (imports, one verdict), then scores verdicts in a loop for SECONDS
and reports (count, elapsed). For W in (1, 2) the W workers start together; throughput is
the sum of their rates and "per worker" is throughput / W. The speedup is
throughput(2 workers) / throughput(1 worker), measured side by side in one run.
`code` verdicts include the whole sandbox start (bubblewrap + supervisor + worker) and are
alternately right and wrong; math verdicts go through math-verify in the worker's main
thread; arith is the exact-match scorer. Also prints the sandbox mode and the load average.

Does NOT: use the verifier service or its cache (raw scorer speed only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# This file is named like the `verifiers` package: keep its own folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

MATH_CASES = [("72", "so \\boxed{72}"), ("\\frac{1}{2}", "\\boxed{0.5}"),
              ("18", "steps\n#### 18"), ("3", "\\boxed{4}"), ("x^2+2x+1", "\\boxed{(x+1)^2}"),
              ("\\sqrt{2}", "\\boxed{\\sqrt 2}"), ("10", "#### 1,0"), ("7", "\\boxed{7.0}")]
CODE_TESTS = "assert add(1, 2) == 3\nassert add(-5, 5) == 0\n"
CODE_SOLUTIONS = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a * b\n"]


def _scorer(task: str):
    """A zero-argument callable producing one verdict per call (cycling through inputs)."""
    i = 0
    if task == "arith":
        from verifiers.tasks import arith
        rows = arith.generate(0, 1000, "train")

        def one():
            nonlocal i
            r = rows[i % len(rows)]
            i += 1
            completion = r["meta"]["solution"] if i % 2 else r["meta"]["solution"][:-1] + "0"
            return arith.score(r["prompt"], r["meta"], completion)
    elif task == "math":
        from verifiers.tasks import math as mt

        def one():
            nonlocal i
            gold, completion = MATH_CASES[i % len(MATH_CASES)]
            i += 1
            return mt.score("q", {"answer": gold}, completion)
    elif task == "code":
        from verifiers import sandbox

        def one():
            nonlocal i
            i += 1
            return sandbox.run_tests(CODE_SOLUTIONS[i % 2], CODE_TESTS)
    else:
        raise ValueError(f"unknown task {task!r}")
    return one


def worker(task: str, seconds: float) -> dict:
    one = _scorer(task)
    one()                                     # warm-up: imports, caches, probe
    n, rewards, t0 = 0, 0.0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rewards += one()["reward"]
        n += 1
    return {"n": n, "elapsed": time.perf_counter() - t0, "mean_reward": rewards / max(n, 1)}


def run_group(task: str, workers: int, seconds: float) -> dict:
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", task, str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{task} worker failed with status {p.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    rate = sum(r["n"] / r["elapsed"] for r in results)
    return {"workers": workers, "verdicts_per_s": rate, "per_worker": rate / workers,
            "n": sum(r["n"] for r in results),
            "mean_reward": sum(r["mean_reward"] for r in results) / workers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--tasks", default="arith,math,code")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", nargs=2, metavar=("TASK", "SECONDS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], float(a.worker[1]))))
        return
    from verifiers.sandbox import sandbox_mode
    print(f"sandbox mode: {sandbox_mode()}  cpus: {os.cpu_count()}  "
          f"load avg: {os.getloadavg()[0]:.2f}  seconds per group: {a.seconds}")
    print(f"{'task':<7} {'1 worker v/s':>13} {'2 workers v/s':>14} {'per worker (2)':>15} "
          f"{'speedup':>8}")
    report = {}
    for task in a.tasks.split(","):
        one = run_group(task, 1, a.seconds)
        two = run_group(task, 2, a.seconds)
        speedup = two["verdicts_per_s"] / one["verdicts_per_s"]
        report[task] = {"1": one, "2": two, "speedup": speedup}
        print(f"{task:<7} {one['per_worker']:>13.1f} {two['verdicts_per_s']:>14.1f} "
              f"{two['per_worker']:>15.1f} {speedup:>8.2f}")
    print(f"load avg after: {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
