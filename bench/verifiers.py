"""Verifier speed: verdict latency before/after a change, and throughput with 1 vs 2 workers.

Usage: python bench/verifiers.py --before main [--verdicts N] [--rounds R] [--tasks code,math]
       python bench/verifiers.py [--seconds S] [--tasks arith,math,code] [--json OUT]

Latency (`--before REF`): checks REF out into a temporary git worktree (removed after) and
times single verdicts of the same inputs with REF's code ("before") and this tree's code
("after") in one run: R rounds alternate a before-process and an after-process, each
scoring N verdicts after 8 warm-up verdicts, so load changes hit both sides alike. Prints
median and p90 milliseconds per verdict and the after/before ratio of medians. Each side
is a fresh `python -c` process whose sys.path starts with its tree, and reports which
`verifiers` file it imported (so "before" provably ran REF's code).

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


LATENCY_SRC = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import verifiers
task, n = sys.argv[2], int(sys.argv[3])
if task == "code":
    from verifiers import sandbox
    tests = %r
    sols = %r
    one = lambda i: sandbox.run_tests(sols[i %% 2], tests)
else:
    from verifiers.tasks import math as mt
    cases = %r
    one = lambda i: mt.score("q", {"answer": cases[i %% len(cases)][0]}, cases[i %% len(cases)][1])
for i in range(8):          # warm-up: imports (math-verify is lazy), caches, probes
    one(i)
times, rewards = [], []
for i in range(n):
    t = time.perf_counter()
    rewards.append(one(i)["reward"])
    times.append(time.perf_counter() - t)
print(json.dumps({"file": verifiers.__file__, "times": times, "rewards": rewards}))
""" % (CODE_TESTS, CODE_SOLUTIONS, MATH_CASES)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def latency(ref: str, tasks: list[str], verdicts: int, rounds: int) -> dict:
    """Median/p90 seconds per verdict with `ref`'s code vs this tree's, interleaved."""
    import shutil
    import tempfile
    root = os.path.dirname(_HERE)
    tmp = tempfile.mkdtemp(prefix="scca-bench-before-")
    subprocess.run(["git", "-C", root, "worktree", "add", "--detach", "-q", tmp, ref], check=True)
    try:
        out = {}
        for task in tasks:
            sides = {"before": {"times": [], "rewards": []}, "after": {"times": [], "rewards": []}}
            for _ in range(rounds):
                for side, tree in (("before", tmp), ("after", root)):
                    r = subprocess.run([sys.executable, "-c", LATENCY_SRC, tree, task, str(verdicts)],
                                       capture_output=True, text=True, cwd=tree, check=True)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    assert res["file"].startswith(tree), (side, res["file"])
                    sides[side]["times"] += res["times"]
                    sides[side]["rewards"] += res["rewards"]
            out[task] = {side: {"median_ms": 1e3 * _percentile(v["times"], 0.5),
                                "p90_ms": 1e3 * _percentile(v["times"], 0.9), "n": len(v["times"]),
                                "mean_reward": sum(v["rewards"]) / len(v["rewards"])}
                         for side, v in sides.items()}
            out[task]["ratio_median"] = out[task]["after"]["median_ms"] / out[task]["before"]["median_ms"]
    finally:
        subprocess.run(["git", "-C", root, "worktree", "remove", "--force", tmp], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def print_latency(ref: str, res: dict) -> None:
    print(f"{'task':<6} {'before median':>14} {'before p90':>11} {'after median':>13} "
          f"{'after p90':>10} {'after/before':>13}   (ms per verdict; before = {ref})")
    for task, r in res.items():
        b, a = r["before"], r["after"]
        print(f"{task:<6} {b['median_ms']:>14.1f} {b['p90_ms']:>11.1f} {a['median_ms']:>13.1f} "
              f"{a['p90_ms']:>10.1f} {r['ratio_median']:>13.2f}   n={a['n']} rewards {b['mean_reward']:.2f}/{a['mean_reward']:.2f}")


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
    ap.add_argument("--before", default=None, help="git ref whose verdict latency to compare with")
    ap.add_argument("--verdicts", type=int, default=20, help="verdicts per process (latency)")
    ap.add_argument("--rounds", type=int, default=3, help="before/after process pairs (latency)")
    ap.add_argument("--worker", nargs=2, metavar=("TASK", "SECONDS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker[0], float(a.worker[1]))))
        return
    if a.before:
        tasks = [t for t in a.tasks.split(",") if t in ("code", "math")]
        print(f"cpus: {os.cpu_count()}  load avg: {os.getloadavg()[0]:.2f}")
        res = latency(a.before, tasks, a.verdicts, a.rounds)
        print_latency(a.before, res)
        print(f"load avg after: {os.getloadavg()[0]:.2f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump(res, f, indent=1)
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
