"""`scca compare`: credit variants × seeds from one checkpoint, same sample budget (DESIGN §6).

What it does: for every method (a name of the credit registry,
`protocol/credit_methods.py`; `grpo` is `uniform`) and seed, runs the whole pipeline
(`deploy.launcher.run`) with `[credit] method` and `[learner] seed` set, into
`OUT/<method>-s<seed>/`; then reads each run's `metrics.jsonl` and writes
  OUT/results.csv   method, seed, samples_to_target, final_accuracy,
                    auc_accuracy_vs_samples, first_error_mass, first_error_auroc,
                    teacher_overhead, wall_seconds, accuracy_before, and the run's
                    step means of the weight statistics (w_max, w_std, w_sq_mean,
                    neg_weight_kept, neg_adv_total), λ, grad_norm (before clipping)
                    and grad_clip_rate (share of steps whose gradient was clipped)
  OUT/results.md    mean ± 95% bootstrap CI per method, paired differences against grpo
  OUT/accuracy.png  held-out accuracy vs samples per method, mean with a CI band
A run whose folder already holds a completed summary made with the same config is reused
(one made with another config is refused with the keys that differ), so an interrupted
comparison continues where it stopped; the one run it was in the middle of is deleted and
run again from the start (a half-trained run is not resumed into the table).

What it does not do: no parallel runs (2 cores: runs would only slow each other), no
significance test beyond the bootstrap CI of the paired differences.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path
import numpy as np

from deploy.launcher import resolved_config, run
from protocol.config import ConfigError, RunConfig
from protocol.credit_methods import COMPARE_ALIASES, CREDIT_METHODS

FINAL_EVALS = 3  # final accuracy = mean of the last this-many evaluations
BOOTSTRAP_RESAMPLES = 2000
CI = 0.95
FIELDS = ("method", "seed", "samples_to_target", "final_accuracy", "auc_accuracy_vs_samples", "first_error_mass",
          "first_error_auroc", "teacher_overhead", "wall_seconds", "accuracy_before", "w_max", "w_std", "w_sq_mean",
          "neg_weight_kept", "neg_adv_total", "lambda_mean", "grad_norm", "grad_clip_rate")
STEP_MEANS = {  # results.csv column -> metrics.jsonl key, averaged over the run's steps
    "w_max": "credit/w_max", "w_std": "credit/w_std", "w_sq_mean": "credit/w_sq_mean",
    "neg_weight_kept": "credit/neg_weight_kept", "neg_adv_total": "credit/neg_adv_total",
    "lambda_mean": "credit/lambda", "grad_norm": "grad_norm", "grad_clip_rate": "grad_clipped",
}


def method_to_credit(method: str) -> str:
    """`scca compare` method name -> [credit] method (the registry's names, plus grpo = uniform)."""
    return COMPARE_ALIASES.get(method, method)


def run_one(cfg: RunConfig, method: str, seed: int, out: Path) -> Path:
    """Run `method` with `seed` into out/METHOD-sSEED, or reuse the finished run there.
    A finished run made with any other config is refused (ConfigError naming the keys
    that differ), never silently put in the table."""
    run_dir = out / f"{method}-s{seed}"
    cfg = cfg.model_copy(update={
        "credit": cfg.credit.model_copy(update={"method": method_to_credit(method)}),
        "learner": cfg.learner.model_copy(update={"seed": seed}),
    })
    summary = run_dir / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("completed"):
        diff = config_diff(json.loads((run_dir / "config.json").read_text()),
                           json.loads(resolved_config(cfg, run_dir).resolved_json()))
        if diff:
            raise ConfigError(f"{run_dir} was run with another config ({'; '.join(diff[:5])}): "
                              "use another --out, or delete that run")
        return run_dir
    if run_dir.exists():  # interrupted part-way: start this run again from scratch
        shutil.rmtree(run_dir)
    run(cfg, run_dir)
    return run_dir


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'section.key: old != new' for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} != {b!r}")
    return out


def curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(samples, accuracy) of every held-out evaluation, in order."""
    samples, acc, seen = [], [], 0
    for r in rows:
        seen = r.get("samples_trained", seen)
        if "heldout_accuracy" in r:
            samples.append(seen)
            acc.append(r["heldout_accuracy"])
    return np.array(samples, dtype=float), np.array(acc, dtype=float)


def summarise(method: str, seed: int, run_dir: Path, target: float) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    samples, acc = curve(rows)
    steps = [r for r in rows if "loss" in r]
    hit = np.nonzero(acc >= target)[0]
    span = samples[-1] - samples[0] if len(samples) > 1 else 0.0
    auc = float(np.trapezoid(acc, samples) / span) if span > 0 else float(acc.mean())
    def mean_of(key):
        vals = [r[key] for r in steps if key in r and r[key] is not None and math.isfinite(r[key])]
        return float(np.mean(vals)) if vals else float("nan")
    step_time = mean_of("time_forward_backward")
    teacher = mean_of("time_teacher")
    return {
        "method": method, "seed": seed,
        "samples_to_target": float(samples[hit[0]]) if len(hit) else float("nan"),
        "final_accuracy": float(acc[-FINAL_EVALS:].mean()),
        "auc_accuracy_vs_samples": auc,
        "first_error_mass": mean_of("credit/first_error_mass"),
        "first_error_auroc": mean_of("credit/first_error_auroc"),
        "teacher_overhead": teacher / step_time if math.isfinite(teacher) and step_time > 0 else 0.0,
        "wall_seconds": json.loads((run_dir / "summary.json").read_text()).get("wall_seconds"),
        "accuracy_before": float(acc[0]) if len(acc) else float("nan"),
        **{col: mean_of(key) for col, key in STEP_MEANS.items()},
    }


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    means = rng.choice(values, size=(BOOTSTRAP_RESAMPLES, len(values))).mean(axis=1)
    lo, hi = np.quantile(means, [(1 - CI) / 2, 1 - (1 - CI) / 2])
    return float(values.mean()), float(lo), float(hi)


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


def write_tables(results: list[dict], out: Path) -> str:
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(results)
    rng = np.random.default_rng(0)
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = ["| method | seeds | final accuracy (95% CI) | Δ final vs grpo, paired (95% CI) | samples to target (median) "
             "| first-error mass | first-error AUROC | teacher overhead |", "|---|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r for r in results if r["method"] == "grpo"}
    for m in methods:
        rs = [r for r in results if r["method"] == m]
        mean, lo, hi = bootstrap_ci(np.array([r["final_accuracy"] for r in rs]), rng)
        paired = np.array([r["final_accuracy"] - base[r["seed"]]["final_accuracy"] for r in rs if r["seed"] in base])
        d = bootstrap_ci(paired, rng) if m != "grpo" and len(paired) else None
        dtxt = f"{d[0]:+.3f} ({d[1]:+.3f}, {d[2]:+.3f})" if d else "—"
        stt = np.nanmedian([r["samples_to_target"] for r in rs]) if any(math.isfinite(r["samples_to_target"]) for r in rs) else float("nan")
        lines.append(f"| {m} | {len(rs)} | {mean:.3f} ({lo:.3f}, {hi:.3f}) | {dtxt} | {stt:.0f} | "
                     f"{_nanmean([r['first_error_mass'] for r in rs]):.3f} | {_nanmean([r['first_error_auroc'] for r in rs]):.3f} | "
                     f"{np.mean([r['teacher_overhead'] for r in rs]):.2f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def plot(curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in curves.items():
        n = min(len(a) for _, a in runs)
        x = runs[0][0][:n]
        ys = np.stack([a[:n] for _, a in runs])
        mean = ys.mean(axis=0)
        half = 1.96 * ys.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros_like(mean)
        ax.plot(x, mean, label=f"{method} (n={len(runs)})")
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ax.set_xlabel("samples trained")
    ax.set_ylabel("held-out accuracy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)


def check_methods(methods: list[str]) -> None:
    known = (*COMPARE_ALIASES, *CREDIT_METHODS)
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ConfigError(f"unknown credit method(s) {bad or '(none given)'}; known: {', '.join(known)}")


def compare(cfg: RunConfig, methods: list[str], seeds: list[int], out: Path, target: float | None) -> str:
    check_methods(methods)
    out.mkdir(parents=True, exist_ok=True)
    dirs = {(m, s): run_one(cfg, m, s, out) for s in seeds for m in methods}
    if target is None:  # default target: the start accuracy + 10 points
        first = next(iter(dirs.values()))
        target = json.loads((first / "summary.json").read_text())["heldout_accuracy_before"] + 0.10
    results = [summarise(m, s, d, target) for (m, s), d in dirs.items()]
    curves: dict[str, list] = {}
    for (m, _), d in dirs.items():
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines() if x.strip()]
        curves.setdefault(m, []).append(curve(rows))
    plot(curves, out)
    return f"target accuracy {target:.3f}\n" + write_tables(results, out)
