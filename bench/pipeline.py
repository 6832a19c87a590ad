"""Where the time goes: `scca run` (max_lag 0, 1, 2) against a one-process loop, side by side.

Every arm starts from the same bootstrap model, task, seed, prompt files and evaluation
schedule, and trains until held-out accuracy is `--gain` (0.10) above its start or the
step budget is spent:
  * `loop`: one process, nothing overlapped, written with the project's own pieces: the
    HF engine generates (sharing the trained model object, so no weight sync), the task's
    scorer scores in-process, `learner/update.py` applies the loss. Prompts in the hub's
    order, 8 at a time (the actors' 64-row batches); a group whose rewards are all equal
    is dropped (DAPO dynamic sampling, as `[loss] drop_no_signal`); a step trains on the
    first `prompts_per_step` groups with signal and drops the rest (DAPO).
  * `lagK`: `scca run` (learner, 2 actors, 1 verifier as processes on loopback) with
    `loss.max_lag = K`; an arm may add `--set` overrides (`name:key=value,key=value`).
It prints, per arm: wall time to +gain (training wall: held-out evaluations and process
start excluded, the same evaluation schedule everywhere; read off the isotonic fit of the
evaluations, which one lucky or unlucky evaluation does not move much), held-out accuracy
at equal training wall (30, 60, 90 s: the last evaluation before each, averaged over repeats;
+0.10 sits near where this model's greedy accuracy levels off within 150 steps, so the
crossing time of one run can move by half its length, while the curve at fixed times
is steadier), trained and generated samples per second, the share of
generated samples that were trained, busy fractions from the run's own timings (learner:
Σ of its step phases except collect and eval; actors: generate seconds; verifier: seconds
with a job in progress; loop: its own phases), and the ratios against `loop`.
`--repeats 2` runs the arms twice, the second time in reverse order (drift shows as the
spread between repeats, printed). `--seeds 0,1,2` makes repeat r run every arm with
`learner.seed = seeds[r]` (data order and initial torch state): the loop is deterministic, so
same-seed repeats only resample its timing, while one seed's held-out curve can cross the
target early or late by luck of one evaluation; the seeds are paired across arms (same data
order) and the per-seed ratios are printed too, with their geometric mean, its 95% bootstrap
interval and an exact sign-flip p value (paired, on log ratios), and the per-seed difference
in learning per step (held-out accuracy averaged over the evaluations at steps 5-50, which
does not depend on how long a step takes). `--pool DIR ...` re-reads several invocations'
run folders as one set of seeds, each arm from the folders that hold it, paired with the
loop by seed (so one-factor arms run later compare with the same loop runs). Results:
`bench/results/pipeline.json`.

    .venv/bin/python bench/pipeline.py [--arms loop,lag0,lag1,lag2] [--repeats 1 | --seeds 0,1,2] \
        [--gain 0.10] [--set learner.eval_every=5 ...] [--out runs/bench-pipeline]
    .venv/bin/python bench/pipeline.py --arms loop,lag1 --pool runs/a --pool runs/b --json pooled.json

Does NOT: run arms concurrently (they would share the cores), or count model loading and
process start-up in any arm's time.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETS = ["learner.eval_every=5", "learner.max_steps=150", "learner.checkpoint_every=1000"]
LOOP_PROMPTS_PER_CALL = 8  # prompts per generate() call in the loop: 8 x group 8 = the actors' 64 rows
WALL_MARKS_S = (30, 60, 90)  # training-wall seconds at which held-out accuracy is compared across arms
# Steps whose evaluations are averaged into the per-step learning measure: every arm's run
# lasts past this (a run stops only at the target, which none has reached by step 50 here).
STEP_WINDOW = (5, 50)
RESAMPLES = 10_000  # bootstrap resamples of the per-seed log ratios (fixed RNG seed 0)
EXACT_SIGN_FLIPS = 16  # up to this many seeds the sign-flip test enumerates all 2^n flips
POLL_S = 1.0  # how often a running `scca run` arm is checked for the target
BOOTSTRAP = ROOT / ".cache" / "scca" / "bootstrap-s0"  # the model every arm starts from (--bootstrap-dir)


# ----------------------------------------------------------------------------- the one-process loop


class OneProcessLoop:
    """The reference loop (run in a worker process): generate -> score -> train, nothing overlapped."""

    def __init__(self, cfg_path: Path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from actors.engines.hf import HFEngine
        from learner.credit.step import CreditStep
        from protocol.config import load_config
        from protocol.dataset import read_jsonl

        self.cfg = cfg = load_config(cfg_path)
        lc = cfg.learner
        torch.set_num_threads(lc.threads)
        torch.manual_seed(lc.seed)
        folder = Path(cfg.model.folder or cfg.model.bootstrap_dir)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lc.lr, betas=tuple(lc.betas),
                                     weight_decay=lc.weight_decay)
        self.engine = HFEngine(folder, threads=lc.threads)
        self.engine.model = self.model  # one model object: generation always sees the newest weights
        self.credit = CreditStep(cfg.credit, self.model, self.tok, seed=lc.seed)
        train, self.heldout = read_jsonl(cfg.task.train_file), read_jsonl(cfg.task.heldout_file)
        self.order = [r["id"] for r in train]
        random.Random(lc.seed).shuffle(self.order)  # the hub's order
        self.rows = {r["id"]: r for r in train}
        self.clock = {"generate": 0.0, "score": 0.0, "forward_backward": 0.0, "eval": 0.0}
        self.cursor = 0

    def timed(self, phase: str, fn, *args, **kw):
        t = time.perf_counter()
        out = fn(*args, **kw)
        self.clock[phase] += time.perf_counter() - t
        return out

    def score(self, row: dict, texts: list[str]) -> list[float]:
        from verifiers.scoring import score_many

        return score_many(self.cfg.task.name, row["prompt"], row["meta"], texts)[0]

    def evaluate(self) -> float:
        """Greedy held-out accuracy (what the hub measures with eval_samples = 1)."""
        a = self.cfg.actor
        outs = self.engine.generate([r["prompt"] for r in self.heldout], 1, temperature=0.0,
                                    max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
        return float(np.mean([self.score(r, [o[0].text])[0] for r, o in zip(self.heldout, outs)]))

    def collect(self) -> tuple[list, int]:
        """prompts_per_step groups with signal (DAPO: generate until full, drop the surplus); samples generated."""
        from learner.hub import Group

        a, n_groups = self.cfg.actor, self.cfg.learner.prompts_per_step
        groups, generated = [], 0
        while len(groups) < n_groups:
            ids = [self.order[(self.cursor + i) % len(self.order)] for i in range(LOOP_PROMPTS_PER_CALL)]
            self.cursor += LOOP_PROMPTS_PER_CALL
            outs = self.timed("generate", self.engine.generate, [self.rows[i]["prompt"] for i in ids], a.group_size,
                              temperature=a.temperature, top_p=a.top_p, max_new_tokens=a.max_new_tokens,
                              batch_size=a.batch_size)
            for pid, samples in zip(ids, outs):
                generated += len(samples)
                rewards = self.timed("score", self.score, self.rows[pid], [s.text for s in samples])
                if len(set(rewards)) > 1 or not self.cfg.loss.drop_no_signal:
                    sd = [{"token_ids": s.token_ids, "logprobs": s.logprobs, "entropy": s.entropy, "text": s.text}
                          for s in samples]
                    groups.append(Group(pid, pid, self.rows[pid]["prompt"], 0, sd, rewards, [{}] * len(rewards)))
        return groups[:n_groups], generated

    def update(self, groups: list, step: int) -> dict:
        import torch

        from learner.update import flatten_groups, policy_update

        lc = self.cfg.learner
        flat = flatten_groups(groups, lambda p: self.tok(p)["input_ids"], std_normalize=self.cfg.loss.std_normalize)
        with torch.no_grad():
            w, _ = self.credit.weights(groups, flat.completions, flat.adv, step)
        return policy_update(self.model, self.opt, flat, w, loss_cfg=self.cfg.loss, micro_batch=lc.micro_batch,
                             grad_clip=lc.grad_clip, pad_id=self.tok.pad_token_id, bf16=lc.bf16)

    def run(self, run_dir: Path, gain: float) -> None:
        """Train until held-out accuracy is `gain` above its start (or max_steps); rows to metrics.jsonl."""
        lc = self.cfg.learner
        with open(run_dir / "metrics.jsonl", "w", buffering=1) as metrics:
            t0 = time.perf_counter()
            before = self.timed("eval", self.evaluate)
            metrics.write(json.dumps({"step": 0, "heldout_accuracy": before, "wall": time.perf_counter() - t0,
                                      "eval_seconds": self.clock["eval"], "time_eval": self.clock["eval"]}) + "\n")
            trained = generated = 0
            for step in range(1, lc.max_steps + 1):
                groups, n = self.collect()
                generated += n
                self.timed("forward_backward", self.update, groups, step - 1)
                trained += sum(len(g.samples) for g in groups)
                row = {"step": step, "samples_trained": trained, "samples_generated": generated,
                       "wall": time.perf_counter() - t0, **{f"time_total_{k}": v for k, v in self.clock.items()}}
                if lc.eval_every and step % lc.eval_every == 0:
                    e = self.clock["eval"]
                    row["heldout_accuracy"] = self.timed("eval", self.evaluate)
                    row["time_eval"] = self.clock["eval"] - e
                row["eval_seconds"] = self.clock["eval"]
                metrics.write(json.dumps(row) + "\n")
                if row.get("heldout_accuracy", -1.0) >= before + gain:
                    break


# ----------------------------------------------------------------------------- running arms


def prepare(base_sets: list[str], arm_sets: list[str], run_dir: Path) -> Path:
    """The arm's resolved config in run_dir/config.json (prompt files written there once)."""
    from deploy.cli import parse_sets
    from deploy.launcher import prepare_run
    from protocol.config import load_config

    cfg = load_config(ROOT / "deploy" / "default.toml", parse_sets(base_sets + arm_sets))
    prepare_run(cfg, run_dir)
    return run_dir / "config.json"


def run_arm(name: str, arm_sets: list[str], base_sets: list[str], run_dir: Path, gain: float,
            before_tree: Path | None) -> float:
    """Run one arm to the target (or its budget); returns the wall seconds of the whole invocation.
    A `before` arm runs `scca run` from the checkout `before_tree` (its own code and defaults)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    t = time.perf_counter()
    if name.startswith("loop"):
        bootstrap = str(BOOTSTRAP.resolve())
        cfg_path = prepare(base_sets, arm_sets + [f"model.bootstrap_dir={bootstrap}"], run_dir)
        subprocess.run([sys.executable, __file__, "--loop-worker", str(cfg_path), "--run-dir", str(run_dir),
                        "--gain", str(gain)], cwd=ROOT, check=True)
        return time.perf_counter() - t
    tree = before_tree if name.startswith("before") else ROOT
    bootstrap = str(BOOTSTRAP.resolve())  # the same model for every arm
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "deploy.cli", "run", "deploy/default.toml", "--out", str(run_dir.resolve()),
           *sum((["--set", x] for x in base_sets + arm_sets + [f"model.bootstrap_dir={bootstrap}"]), [])]
    log = open(run_dir.parent / f"{run_dir.name}.launcher.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    stopped = False
    while proc.poll() is None:
        time.sleep(POLL_S)
        if not stopped and reached(run_dir, gain):
            proc.send_signal(signal.SIGTERM)  # the launcher stops every service cleanly
            stopped = True
    proc.wait()
    return time.perf_counter() - t


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


# ----------------------------------------------------------------------------- what the runs say


def train_wall(row: dict) -> float:
    """Wall seconds of training up to this row: evaluations (all of them before this row's
    own, which ran after `wall` was taken) subtracted. Rows without eval timings (a `before`
    arm) keep their evaluations in."""
    return row["wall"] - (row.get("eval_seconds", 0.0) - row.get("time_eval", 0.0))


def isotonic(values: list[float]) -> list[float]:
    """The non-decreasing least-squares fit of a sequence (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def evaluations(rows: list[dict], clock) -> list[tuple[float, float]]:
    """(clock(row), held-out accuracy) of every evaluation row; the start evaluation at 0."""
    return [(0.0 if r["step"] == 0 else clock(r), r["heldout_accuracy"]) for r in rows if "heldout_accuracy" in r]


def time_to_target(rows: list[dict], gain: float, clock) -> tuple[float | None, float]:
    """(clock(row) at which held-out accuracy reaches start + gain, None if never; start accuracy).

    One evaluation's accuracy swings by several points between neighbouring evaluations
    (greedy accuracy of a changing policy), so the crossing is read off the isotonic
    (non-decreasing least-squares) fit of the evaluations after the start, linearly
    interpolated between the two fitted points around it. The start evaluation is at 0."""
    evals = evaluations(rows, clock)
    before = evals[0][1]
    target = before + gain
    fitted = [(0.0, before)] + list(zip([t for t, _ in evals[1:]], isotonic([a for _, a in evals[1:]])))
    for (t0, a0), (t1, a1) in zip(fitted, fitted[1:]):
        if a1 >= target:
            return t0 + (t1 - t0) * (target - min(a0, target)) / max(a1 - min(a0, target), 1e-9), before
    return None, before


def heldout_at(rows: list[dict], times: tuple[float, ...]) -> list[float | None]:
    """The last held-out evaluation at or before each training-wall time (None past the run's
    end: a run stops once it reaches the target, so later values would be selected)."""
    evals = evaluations(rows, train_wall)
    return [[a for t0, a in evals if t0 <= t][-1] if evals[-1][0] >= t else None for t in times]


def heldout_mean_steps(rows: list[dict], window: tuple[int, int] = STEP_WINDOW) -> float | None:
    """Mean held-out accuracy of the evaluations at steps window[0]..window[1]: learning per
    step, whatever a step costs in wall time (None when the run stopped before window[1]).
    Ten or so evaluations averaged swing far less than the one that crosses the target."""
    evals = {r["step"]: r["heldout_accuracy"] for r in rows if "heldout_accuracy" in r}
    if window[1] not in evals:
        return None
    return float(np.mean([a for s, a in evals.items() if window[0] <= s <= window[1]]))


def reached(run_dir: Path, gain: float) -> bool:
    """The run can stop: the isotonic fit of its evaluations has crossed the target."""
    rows = [r for r in read_rows(run_dir) if "heldout_accuracy" in r]
    return len(rows) >= 2 and time_to_target(rows, gain, lambda r: r.get("wall", 0.0))[0] is not None


def generated_from_ledger(run_dir: Path, group_size: int) -> int:
    """Samples generated, from the ledger, for runs whose rows do not count them (no screening
    there: every trained or dropped group was generated in full)."""
    import sqlite3

    db = sqlite3.connect(run_dir / "ledger.sqlite")
    n = db.execute("SELECT COUNT(*) FROM items WHERE state IN ('scored','trained') OR "
                   "(state='dropped' AND reason IN ('no_signal','stale'))").fetchone()[0]
    db.close()
    return int(n) * group_size


def busy_from_logs(run_dir: Path) -> dict:
    """{process: busy fraction} from the `busy:` lines actors and verifiers log at exit."""
    out = {}
    for log in sorted((run_dir / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        m = re.search(r"busy: generate ([\d.]+)s, weights ([\d.]+)s, alive ([\d.]+)s", text)
        if m:
            out[log.stem] = float(m.group(1)) / max(float(m.group(3)), 1e-9)
        m = re.search(r"busy: scoring ([\d.]+)s, alive ([\d.]+)s", text)
        if m:
            out[log.stem] = float(m.group(1)) / max(float(m.group(2)), 1e-9)
    return out


def summarise(name: str, run_dir: Path, gain: float, invocation_s: float) -> dict:
    rows = read_rows(run_dir)
    steps = [r for r in rows if r.get("step", 0) > 0 and "samples_trained" in r]
    if not steps:
        raise RuntimeError(f"arm {name} trained no step; see {run_dir}/logs or {run_dir.parent}/{run_dir.name}.launcher.log")
    timed_evals = "eval_seconds" in steps[-1]
    ttt, before = time_to_target(rows, gain, train_wall)
    ttt_wall, _ = time_to_target(rows, gain, lambda r: r["wall"])
    last = steps[-1]
    wall = train_wall(last)
    generated = last.get("samples_generated") or generated_from_ledger(run_dir, 8)
    out = {"arm": name, "heldout_before": before, "time_to_target_s": ttt if timed_evals else None,
           "time_to_target_with_evals_s": ttt_wall, "steps": last["step"],
           "samples_trained": last["samples_trained"], "samples_generated": generated,
           "train_wall_s": wall, "evals_excluded": timed_evals, "invocation_s": invocation_s,
           "heldout_last": [r["heldout_accuracy"] for r in rows if "heldout_accuracy" in r][-1],
           "heldout_at_s": dict(zip(map(str, WALL_MARKS_S), heldout_at(rows, WALL_MARKS_S) if timed_evals else [])),
           "heldout_mean_steps": heldout_mean_steps(rows)}
    out["trained_per_s"] = last["samples_trained"] / wall
    out["generated_per_s"] = generated / wall
    out["trained_over_generated"] = last["samples_trained"] / max(generated, 1)
    if name.startswith("loop"):
        out["busy"] = {k[len("time_total_"):]: v / last["wall"] for k, v in last.items() if k.startswith("time_total_")}
    else:
        phases = ("time_forward_backward", "time_publish", "time_checkpoint")
        learner = sum(r.get(p, 0.0) for r in steps for p in phases)
        out["busy"] = {"learner": learner / wall, **busy_from_logs(run_dir)}
        out["step_time_s"] = float(np.mean([r["time_forward_backward"] for r in steps]))
        out["publish_time_s"] = float(np.mean([r["time_publish"] for r in steps]))
    return out


# ----------------------------------------------------------------------------- report


def parse_arm(spec: str) -> tuple[str, list[str]]:
    """`lag1` -> ("lag1", ["loss.max_lag=1"]); `name:a.b=1,c.d=2` -> (name, [...]) (+ the lag of lagK names)."""
    name, _, extra = spec.partition(":")
    sets = [x for x in extra.split(",") if x]
    m = re.match(r"lag(\d+)", name)
    if m:
        sets = [f"loss.max_lag={m.group(1)}"] + sets
    elif not name.startswith(("loop", "before")):
        raise SystemExit(f"arm {spec!r}: names are loop[...], lagK[...] (K = max_lag) or before[...]")
    return name, sets


def combine(results: list[dict]) -> dict:
    """Median over repeats of every number; the spread (max/min) of time to target."""
    out = {k: v for k, v in results[0].items() if k != "seed"}
    out["seeds"] = [r["seed"] for r in results]
    for key, v in out.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[key] for r in results if r.get(key) is not None]
            out[key] = float(np.median(vals)) if vals else None
    ttt = [r["time_to_target_s"] for r in results if r["time_to_target_s"] is not None]
    out["heldout_at_s"] = {t: mean_or_none([r["heldout_at_s"].get(t) for r in results]) for t in results[0]["heldout_at_s"]}
    out["time_to_target_all_s"] = [r["time_to_target_s"] for r in results]
    out["time_to_target_spread"] = max(ttt) / min(ttt) if len(ttt) > 1 else None
    if any(r["time_to_target_s"] is None for r in results):
        out["time_to_target_s"] = None  # a repeat that never reached the target: no median
    return out


def mean_or_none(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def report(arms: dict[str, dict], gain: float) -> dict:
    """Print the table and the ratios against the loop; return the ratios for the JSON."""
    loop = next((v for k, v in arms.items() if k.startswith("loop")), None) or {}
    fmt = "{:14s} {:>9s} {:>8s} {:>10s} {:>8s} {:>9s} {:>8s} {:>8s} {:>5s}  {}"
    print(fmt.format("arm", f"t->+{gain:.2f}", "vs loop", "with evals", "vs loop", "trained/s", "gen/s", "trained%",
                     "steps", "busy"))
    ratios, ratios_wall = {}, {}
    for name, r in arms.items():
        ttt, ttw = r["time_to_target_s"], r["time_to_target_with_evals_s"]
        ratios[name] = ratio(ttt, loop.get("time_to_target_s"))
        ratios_wall[name] = ratio(ttw, loop.get("time_to_target_with_evals_s"))
        busy = " ".join(f"{k}={v:.2f}" for k, v in r["busy"].items())
        print(fmt.format(name, f"{ttt:.0f}s" if ttt else "-", f"{ratios[name]:.2f}x" if ratios[name] else "-",
                         f"{ttw:.0f}s" if ttw else "never", f"{ratios_wall[name]:.2f}x" if ratios_wall[name] else "-",
                         f"{r['trained_per_s']:.1f}", f"{r['generated_per_s']:.1f}",
                         f"{100 * r['trained_over_generated']:.0f}%", f"{r['steps']:.0f}", busy))
    if loop:
        print("vs loop, trained/s and generated/s:", ", ".join(
            f"{k} {r['trained_per_s'] / loop['trained_per_s']:.2f}x/{r['generated_per_s'] / loop['generated_per_s']:.2f}x"
            for k, r in arms.items() if not k.startswith("loop")))
    print("held-out accuracy at equal training wall (mean over repeats; runs that already stopped left out):")
    for name, r in arms.items():
        print(f"  {name:12s}", "  ".join(f"{t}s {a:.3f}" if a is not None else f"{t}s -" for t, a in r["heldout_at_s"].items()))
    lag = {re.fullmatch(r"lag(\d+)", k).group(1): v for k, v in ratios.items() if re.fullmatch(r"lag\d+", k)}
    return {"time_to_target_ratio_vs_loop": lag, "time_to_target_ratio_vs_loop_by_arm": ratios,
            "time_to_target_with_evals_ratio_vs_loop_by_arm": ratios_wall,
            "trained_over_generated": {k: r["trained_over_generated"] for k, r in arms.items()},
            "heldout_at_train_wall_s": {k: r["heldout_at_s"] for k, r in arms.items()}}


def sign_flip_p(values: np.ndarray) -> float:
    """Two-sided p value of "mean = 0" for paired differences: the share of sign flips of
    `values` whose |mean| is at least the observed one (exact up to EXACT_SIGN_FLIPS values,
    else 2^16 random flips). It assumes only that each seed's difference is symmetric about 0
    under the null, no normal distribution."""
    n = len(values)
    if n > EXACT_SIGN_FLIPS:
        signs = np.random.default_rng(0).choice((-1.0, 1.0), size=(2 ** EXACT_SIGN_FLIPS, n))
    else:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # [2^n, n]
    observed = abs(values.mean())
    return float((np.abs((signs * values).mean(axis=1)) >= observed - 1e-12).mean())


def bootstrap_ci(values: np.ndarray) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (RESAMPLES, RNG seed 0)."""
    means = np.random.default_rng(0).choice(values, size=(RESAMPLES, len(values))).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired_stats(ratios: list[float | None]) -> dict:
    """Per-seed time-to-target ratios -> their geometric mean, its 95% bootstrap interval and
    the sign-flip p value of "no difference" (all on log ratios). Seeds where either arm
    never reached the target are counted, not used."""
    logs = np.log([r for r in ratios if r])
    out = {"seeds_used": len(logs), "seeds_not_reached": len(ratios) - len(logs)}
    if len(logs) < 2:
        return out
    lo, hi = bootstrap_ci(logs)
    return {**out, "geomean": float(np.exp(logs.mean())), "ci95": [float(np.exp(lo)), float(np.exp(hi))],
            "median": float(np.exp(np.median(logs))), "p_sign_flip": sign_flip_p(logs)}


def paired_step_stats(arm: list[dict], loop: list[dict]) -> dict:
    """Per-seed difference in held-out accuracy averaged over STEP_WINDOW (arm minus loop):
    mean, 95% bootstrap interval, sign-flip p value."""
    diffs = np.array([a["heldout_mean_steps"] - b["heldout_mean_steps"] for a, b in zip(arm, loop)
                      if a.get("heldout_mean_steps") is not None and b.get("heldout_mean_steps") is not None])
    out = {"seeds_used": len(diffs), "per_seed": [float(d) for d in diffs]}
    if len(diffs) < 2:
        return out
    return {**out, "mean": float(diffs.mean()), "ci95": list(bootstrap_ci(diffs)), "p_sign_flip": sign_flip_p(diffs)}


def paired_ratios(results: dict[str, list[dict]]) -> dict:
    """Paired comparisons against the loop, seed by seed, printed: time-to-target ratios (and
    their statistics) and the per-step learning difference."""
    loop_rows = next((v for k, v in results.items() if k.startswith("loop")), None)
    if not loop_rows:
        return {}
    # paired by seed: pooled folders may hold different arms (a seed the loop ran twice pairs with its last run)
    loop = {r["seed"]: r for r in loop_rows}
    pairs = {k: [(r, loop[r["seed"]]) for r in rs if r["seed"] in loop]
             for k, rs in results.items() if not k.startswith("loop")}
    out = {k: [ratio(r["time_to_target_s"], lr["time_to_target_s"]) for r, lr in ps] for k, ps in pairs.items()}
    stats = {k: paired_stats(v) for k, v in out.items()}
    steps = {k: paired_step_stats([r for r, _ in ps], [lr for _, lr in ps]) for k, ps in pairs.items()}
    for k, rs in out.items():
        print(f"{k} / loop per seed ({[r['seed'] for r, _ in pairs[k]]}):",
              ", ".join(f"{x:.2f}x" if x else "-" for x in rs))
        st = stats[k]
        if "geomean" in st:
            print(f"  geometric mean {st['geomean']:.2f}x (95% bootstrap {st['ci95'][0]:.2f}-{st['ci95'][1]:.2f}x), "
                  f"median {st['median']:.2f}x, sign-flip p = {st['p_sign_flip']:.2f}, "
                  f"{st['seeds_used']} seeds ({st['seeds_not_reached']} never reached)")
        sp = steps[k]
        if "mean" in sp:
            print(f"  held-out mean over steps {STEP_WINDOW[0]}-{STEP_WINDOW[1]} minus the loop's: {sp['mean']:+.3f} "
                  f"(95% bootstrap {sp['ci95'][0]:+.3f} to {sp['ci95'][1]:+.3f}, sign-flip p = {sp['p_sign_flip']:.2f})")
    return {"paired_ratio_vs_loop": out, "paired_stats_vs_loop": stats, "heldout_mean_steps_vs_loop": steps}


def invocations(args) -> list[tuple[Path, list]]:
    """(run folder, seeds) of each invocation to summarise: the one `--out` with its seeds,
    or with `--pool` every folder named (read only), each with the seeds its pipeline.json
    recorded, so seeds run in separate invocations are compared as one set."""
    if args.pool:
        return [(Path(d), json.loads((Path(d) / "pipeline.json").read_text())["seeds"]) for d in args.pool]
    return [(Path(args.out), [int(x) for x in args.seeds.split(",")] if args.seeds else [None] * args.repeats)]


def recorded_command(out_dir: Path) -> str | None:
    """The command an earlier invocation recorded in its folder's pipeline.json (None: none there)."""
    path = out_dir / "pipeline.json"
    return json.loads(path.read_text())["command"] if path.exists() else None


def run_invocation(args, specs: list, base: list[str], out_dir: Path, seeds: list) -> dict[str, list[dict]]:
    """Every arm once per seed (or repeat), arm order reversed on odd repeats; or, with
    --summarise-only / --pool, the run folders an earlier invocation left in out_dir."""
    read_only = args.summarise_only or bool(args.pool)
    results: dict[str, list[dict]] = {name: [] for name, _ in specs}
    for rep, seed in enumerate(seeds):
        seed_sets = [] if seed is None else [f"learner.seed={seed}"]
        for name, sets in (specs if rep % 2 == 0 else specs[::-1]):
            run_dir = out_dir / f"{name}-r{rep}"
            seconds = None
            if args.pool and not run_dir.is_dir():
                continue  # a pooled folder need not hold every arm
            if not read_only:
                print(f"[{time.strftime('%H:%M:%S')}] {name} (repeat {rep}, seed {seed}) load "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
                seconds = run_arm(name, sets + seed_sets, base, run_dir, args.gain, args.before_tree)
            results[name].append({"seed": f"r{rep}" if seed is None else seed,
                                  **summarise(name, run_dir, args.gain, seconds)})
            print(json.dumps(results[name][-1]), flush=True)
    return results


def main() -> None:
    global BOOTSTRAP
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arms", default="loop,lag0,lag1,lag2", help="comma list: loop, lagK, or name:key=value,... "
                    "(use ';' between arms when an arm has several overrides)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seeds", help="comma list of learner seeds, one repeat each (overrides --repeats)")
    ap.add_argument("--gain", type=float, default=0.10)
    ap.add_argument("--set", action="append", default=[], help="override for every arm (section.key=value)")
    ap.add_argument("--out", default="runs/bench-pipeline")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "pipeline.json"))
    ap.add_argument("--bootstrap-dir", default=str(BOOTSTRAP))
    ap.add_argument("--before-tree", type=Path, help="checkout whose `scca run` the `before` arm runs (e.g. a "
                    "`git worktree` of main before these changes)")
    ap.add_argument("--summarise-only", action="store_true", help="run nothing: summarise the run folders an earlier "
                    "invocation with the same --arms/--seeds/--out left (e.g. after adding a measure)")
    ap.add_argument("--pool", action="append", default=[], help="run nothing: summarise the --arms of several earlier "
                    "invocations' --out folders together (repeatable; each folder's pipeline.json gives its seeds)")
    ap.add_argument("--loop-worker", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop_worker:
        return OneProcessLoop(Path(args.loop_worker)).run(Path(args.run_dir), args.gain)
    os.chdir(ROOT)
    BOOTSTRAP = Path(args.bootstrap_dir).resolve()
    specs = [parse_arm(s) for s in re.split(r"[;]" if ";" in args.arms else r",", args.arms) if s]
    base = DEFAULT_SETS + args.set
    results: dict[str, list[dict]] = {name: [] for name, _ in specs}
    seeds: list = []
    read_only = args.summarise_only or bool(args.pool)
    runs = ([{"folder": str(d), "seeds": sd, "command": recorded_command(d)} for d, sd in invocations(args)]
            if read_only else [])
    for out_dir, out_seeds in invocations(args):
        for name, rs in run_invocation(args, specs, base, out_dir, out_seeds).items():
            results[name] += rs
        seeds += out_seeds
    arms = {name: combine(rs) for name, rs in results.items() if rs}
    summary = report(arms, args.gain)
    summary.update(paired_ratios(results))
    out = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), "gain": args.gain,
           "base_sets": base, "seeds": seeds, "arms": arms, "repeats": {k: v for k, v in results.items()},
           "loadavg_end": os.getloadavg(), **summary}
    if read_only:
        out["runs"] = runs  # the invocations whose run folders were read, as each recorded itself
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
