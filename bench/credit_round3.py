"""Credit round 3 report (issue 10): every arm's runs -> bench/results/credit_round3.{md,csv,png}.

Reads the run folders `scca compare` wrote (one folder per arm x seed, paired by seed:
same bootstrap, same prompts, same evaluation set) and the teacher checks JSON written by
`bench/credit_round3_checks.py`, and writes
  OUT.csv  one row per run: arm, method, terms, seed, final_accuracy, accuracy_before,
           the weight statistics and gradient numbers of `deploy/compare.summarise`
  OUT.md   notes (hand-written, --notes), the teacher checks, one table per setting:
           mean final accuracy with a 95% CI, paired Δ against U with a bootstrap and a
           t 95% CI and the minimum detectable effect, the pre-registered contrasts
           (O-U, T-U, T-R, K-U, K-RLSD-U), weight statistics; the commands
  OUT.png  held-out accuracy vs samples per arm (mean, 95% band), and the paired Δs
Arms not run (no finished run folder) are left out and named as missing; nothing is
extrapolated.

    .venv/bin/python bench/credit_round3.py --runs 10=runs/r3-t10 [--runs 3=runs/r3-t3 ...] \\
        --checks bench/results/credit_round3_checks.json --notes NOTES.md --out bench/results/credit_round3

Imports deploy/ (allowed here: bench/ is not a service).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from deploy.compare import FIELDS, curve, summarise  # noqa: E402

ARMS = (("U", "grpo"), ("O", "verifier"), ("T", "sc_cut"), ("R", "sc_cut_shuffled"), ("K", "sc_grpo"),
        ("K-RLSD", "sc_grpo_rlsd"))
CONTRASTS = (("O", "U"), ("T", "U"), ("T", "R"), ("K", "U"), ("K-RLSD", "U"))
# two-sided 95% and one-sided 80% t quantiles by degrees of freedom (n - 1 paired seeds)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
T80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
       11: 0.876, 12: 0.873, 15: 0.866, 20: 0.860, 30: 0.854}
BOOTSTRAP = 4000


def _t(table: dict, df: int) -> float:
    return table[max(k for k in table if k <= df)]


def paired(a: dict[int, float], b: dict[int, float], rng: np.random.Generator) -> dict | None:
    """Paired differences a - b over the seeds both have: mean, bootstrap and t 95% CIs,
    and the minimum detectable effect (two-sided α = 0.05, power 0.8) with this spread."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    boots = rng.choice(d, size=(BOOTSTRAP, len(d))).mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    se = d.std(ddof=1) / math.sqrt(len(d))
    t = _t(T975, len(d) - 1)
    return {"n": len(d), "mean": float(d.mean()), "boot_lo": float(lo), "boot_hi": float(hi),
            "t_lo": float(d.mean() - t * se), "t_hi": float(d.mean() + t * se), "sd": float(d.std(ddof=1)),
            "mde": float((t + _t(T80, len(d) - 1)) * se), "wins": int((d > 0).sum())}


def load_setting(terms: int, folder: Path) -> list[dict]:
    """One summary row per finished arm x seed run in `folder` (compare's layout)."""
    rows = []
    for arm, method in ARMS:
        for run in sorted(folder.glob(f"{method}-s*")):
            summary = run / "summary.json"
            if not summary.exists() or not json.loads(summary.read_text()).get("completed"):
                continue
            seed = int(run.name.rsplit("-s", 1)[1])
            before = json.loads(summary.read_text())["heldout_accuracy_before"]
            rows.append({"arm": arm, "terms": terms, **summarise(method, seed, run, before + 0.10)})
    return rows


def fmt(x: float, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def setting_tables(terms: int, rows: list[dict], rng: np.random.Generator) -> list[str]:
    by_arm = {arm: {r["seed"]: r for r in rows if r["arm"] == arm} for arm, _ in ARMS}
    acc = {arm: {s: r["final_accuracy"] for s, r in runs.items()} for arm, runs in by_arm.items()}
    out = [f"### {terms} terms", "",
           "| arm | method | seeds | final accuracy (95% CI) | Δ vs U paired (bootstrap 95% CI) | t 95% CI | MDE | "
           "wins | first-error mass | neg. weight kept | max w | std w | Σw²/n | mean λ | grad norm | clip rate | min/run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm, method in ARMS:
        runs = list(by_arm[arm].values())
        if not runs:
            out.append(f"| {arm} | {method} | 0 | not run | | | | | | | | | | | | | |")
            continue
        v = np.array([r["final_accuracy"] for r in runs])
        half = _t(T975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
        d = paired(acc[arm], acc["U"], rng) if arm != "U" else None
        m = {k: float(np.nanmean([r[k] for r in runs])) for k in
             ("first_error_mass", "neg_weight_kept", "w_max", "w_std", "w_sq_mean", "lambda_mean", "grad_norm",
              "grad_clip_rate", "wall_seconds")}
        dtxt = (f"{d['mean']:+.3f} ({d['boot_lo']:+.3f}, {d['boot_hi']:+.3f}) | ({d['t_lo']:+.3f}, {d['t_hi']:+.3f}) | "
                f"{d['mde']:.3f} | {d['wins']}/{d['n']}") if d else "— | — | — | —"
        out.append(f"| {arm} | {method} | {len(v)} | {v.mean():.3f} ({v.mean() - half:.3f}, {v.mean() + half:.3f}) | "
                   f"{dtxt} | {fmt(m['first_error_mass'])} | {fmt(m['neg_weight_kept'])} | {fmt(m['w_max'], '.2f')} | "
                   f"{fmt(m['w_std'], '.2f')} | {fmt(m['w_sq_mean'], '.2f')} | {fmt(m['lambda_mean'], '.2f')} | "
                   f"{fmt(m['grad_norm'], '.2f')} | {fmt(m['grad_clip_rate'], '.2f')} | {m['wall_seconds'] / 60:.1f} |")
    out += ["", "Pre-registered contrasts (paired by seed):", "",
            "| contrast | seeds | mean Δ | bootstrap 95% CI | t 95% CI | MDE (α 0.05, power 0.8) | CI excludes 0 |",
            "|---|---|---|---|---|---|---|"]
    for a, b in CONTRASTS:
        d = paired(acc[a], acc[b], rng)
        if d is None:
            out.append(f"| {a} − {b} | — | not run | | | | |")
            continue
        excl = "yes" if d["t_lo"] > 0 or d["t_hi"] < 0 else "no"
        out.append(f"| {a} − {b} | {d['n']} | {d['mean']:+.3f} | ({d['boot_lo']:+.3f}, {d['boot_hi']:+.3f}) | "
                   f"({d['t_lo']:+.3f}, {d['t_hi']:+.3f}) | {d['mde']:.3f} | {excl} |")
    return out + [""]


def checks_table(checks: dict) -> list[str]:
    rows = [("greedy accuracy, plain", "greedy_accuracy", None),
            ("greedy accuracy with the correct solution in context", "reference_accuracy", "≥ 0.80"),
            ("teacher first divergence = verifier's first wrong token", "divergence_equals_first_wrong", "≥ 0.60"),
            ("  … divergence before / after the first wrong token", None, None),
            ("  … argmax KL alone = first wrong token", "argmax_kl_equals_first_wrong", None),
            ("  … first q(y) < 0.1 alone = first wrong token", "first_low_q_equals_first_wrong", None),
            ("share of wrong samples' tokens after the first error", "tokens_after_first_error", "≥ 0.50"),
            ("share of the KL mass after the first error (mean per sample)", "kl_mass_after_first_error", None),
            ("sampled accuracy at temperature 1", "sampled_accuracy", None)]
    out = [f"Model `{checks['model']}`; {checks['heldout_n']} held-out problems for the greedy accuracies, "
           f"{checks['wrong_samples']} wrong samples (of {checks['sampled']} drawn in groups of 8) for the rest.", "",
           "| check | value | bar |", "|---|---|---|"]
    for label, key, bar in rows:
        if key is None:
            val = f"{checks['divergence_before_first_wrong']:.3f} / {checks['divergence_after_first_wrong']:.3f}"
        else:
            val = f"{checks[key]:.3f}"
        out.append(f"| {label} | {val} | {bar or ''} |")
    return out + [f"\nWrong answers: {checks['wrong_length_tokens_mean']:.1f} tokens on average, first error at "
                  f"token {checks['first_error_token_mean']:.1f} on average.", ""]


def plot(settings: dict[int, list[dict]], folders: dict[int, Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = max(settings, key=lambda t: len(settings[t]))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm, method in ARMS:
        runs = [curve([json.loads(x) for x in (folders[main] / f"{method}-s{r['seed']}" / "metrics.jsonl")
                       .read_text().splitlines() if x.strip()]) for r in settings[main] if r["arm"] == arm]
        if not runs:
            continue
        n = min(len(a) for _, a in runs)
        x, ys = runs[0][0][:n], np.stack([a[:n] for _, a in runs])
        half = 1.96 * ys.std(axis=0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else 0 * x
        ax.plot(x, ys.mean(axis=0), label=f"{arm} {method} (n={len(runs)})")
        ax.fill_between(x, ys.mean(axis=0) - half, ys.mean(axis=0) + half, alpha=0.15)
    ax.set(xlabel="samples trained", ylabel="held-out accuracy (greedy)", title=f"arith, {main} terms")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    rng = np.random.default_rng(0)
    labels, means, los, his = [], [], [], []
    for terms, rows in sorted(settings.items()):
        acc = {arm: {r["seed"]: r["final_accuracy"] for r in rows if r["arm"] == arm} for arm, _ in ARMS}
        for a, b in CONTRASTS:
            d = paired(acc[a], acc[b], rng)
            if d:
                labels.append(f"{a}−{b}\n{terms}t")
                means.append(d["mean"])
                los.append(d["mean"] - d["t_lo"])
                his.append(d["t_hi"] - d["mean"])
    bx.errorbar(range(len(means)), means, yerr=[los, his], fmt="o", capsize=4)
    bx.axhline(0, color="grey", lw=1)
    bx.set_xticks(range(len(labels)), labels, fontsize=7)
    bx.set(ylabel="paired Δ final accuracy (t 95% CI)", title="pre-registered contrasts")
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", action="append", required=True, metavar="TERMS=DIR")
    ap.add_argument("--checks", type=Path, action="append", default=[])
    ap.add_argument("--notes", type=Path)
    ap.add_argument("--commands", type=Path, help="text file of the commands that reproduce the runs")
    ap.add_argument("--out", type=Path, default=Path("bench/results/credit_round3"))
    args = ap.parse_args()
    folders = {int(t): Path(d) for t, d in (x.split("=", 1) for x in args.runs)}
    settings = {t: load_setting(t, d) for t, d in folders.items()}
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=("arm", "terms", *FIELDS))
        w.writeheader()
        for t in sorted(settings):
            w.writerows(settings[t])
    rng = np.random.default_rng(0)
    md = ["# Credit round 3: is there room for token credit on long chains?", ""]
    if args.notes:
        md += [args.notes.read_text().rstrip(), ""]
    md += ["## Teacher checks before RL", ""]
    for path in args.checks:
        md += checks_table(json.loads(path.read_text()))
    md += ["## Results (final accuracy = mean of the last 3 held-out evaluations, greedy, on the `[task] heldout_size` problems of the runs' config)", ""]
    for t in sorted(settings, reverse=True):
        md += setting_tables(t, settings[t], rng)
    if args.commands:
        md += ["## Commands", "", "```bash", args.commands.read_text().rstrip(), "```", ""]
    args.out.with_suffix(".md").write_text("\n".join(md))
    plot(settings, folders, args.out)
    print("\n".join(md))


if __name__ == "__main__":
    main()
