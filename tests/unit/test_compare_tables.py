"""scca compare's tables: final accuracy, samples to target, paired CIs, from run folders."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from deploy.compare import check_methods, curve, run_one, summarise, write_tables
from deploy.launcher import prepare_run, resolved_config
from protocol.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _run_folder(path, accs, per_step=100, evals_every=2, teacher=None):
    """A run folder as the learner writes it: step rows, an eval row after every `evals_every` steps."""
    path.mkdir(parents=True)
    rows = [{"step": 0, "heldout_accuracy": accs[0]}]
    for i, a in enumerate(accs[1:], start=1):
        for k in range(evals_every):
            step = (i - 1) * evals_every + k + 1
            row = {"step": step, "samples_trained": step * per_step, "loss": 0.1, "time_forward_backward": 1.0}
            if teacher is not None:
                row["time_teacher"] = teacher
            rows.append(row)
        rows.append({"step": i * evals_every, "heldout_accuracy": a})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"completed": True, "wall_seconds": 12.5}))
    return path


def test_curve_and_summary_numbers(tmp_path):
    d = _run_folder(tmp_path / "a", [0.1, 0.15, 0.22, 0.24, 0.30], teacher=0.25)
    samples, acc = curve([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()])
    assert samples.tolist() == [0, 200, 400, 600, 800] and acc.tolist() == [0.1, 0.15, 0.22, 0.24, 0.30]
    r = summarise("sc_kl", 0, d, target=0.2)
    assert r["samples_to_target"] == 400  # first evaluation at or above 0.2
    assert r["final_accuracy"] == pytest.approx((0.22 + 0.24 + 0.30) / 3)
    assert r["auc_accuracy_vs_samples"] == pytest.approx(np.trapezoid([0.1, 0.15, 0.22, 0.24, 0.30], [0, 200, 400, 600, 800]) / 800)
    assert r["teacher_overhead"] == pytest.approx(0.25) and r["wall_seconds"] == 12.5
    assert np.isnan(summarise("sc_kl", 0, d, target=0.9)["samples_to_target"])  # never reached


def test_tables_pair_by_seed(tmp_path):
    results = []
    for seed, (g, m) in enumerate([(0.30, 0.33), (0.20, 0.22), (0.25, 0.29)]):
        results.append(summarise("grpo", seed, _run_folder(tmp_path / f"g{seed}", [0.1] + [g] * 3), 0.15))
        results.append(summarise("entropy", seed, _run_folder(tmp_path / f"e{seed}", [0.1] + [m] * 3), 0.15))
    text = write_tables(results, tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("| entropy"))
    assert "+0.030 (" in line  # paired mean difference (0.03 + 0.02 + 0.04) / 3
    lo, hi = (float(v) for v in line.split("|")[4].split("(")[1].rstrip(") ").split(","))
    assert 0.0 < lo <= 0.03 <= hi  # every seed gained: the paired CI excludes 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 6 and rows[0]["method"] == "grpo" and float(rows[1]["final_accuracy"]) == pytest.approx(0.33)


def test_unknown_methods_are_named():
    check_methods(["grpo", "sc_prefix", "hidden", "shuffled"])
    with pytest.raises(ConfigError, match=r"unknown credit method\(s\) \['sc_best'\]"):
        check_methods(["grpo", "sc_best"])


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    cfg = load_config(ROOT / "deploy" / "compare_countdown.toml", {"task": {"train_size": 100, "heldout_size": 10}})
    run_dir = tmp_path / "sc_kl-s1"
    made = cfg.model_copy(update={"credit": cfg.credit.model_copy(update={"method": "sc_kl"}),
                                  "learner": cfg.learner.model_copy(update={"seed": 1})})
    prepare_run(made, run_dir)  # writes config.json (absolute paths) and the prompt files, as a real run does
    (run_dir / "summary.json").write_text(json.dumps({"completed": True}))
    assert run_one(cfg, "sc_kl", 1, tmp_path) == run_dir  # same config: reused, nothing run
    gate = cfg.credit.gate_ratio
    other = cfg.model_copy(update={"credit": cfg.credit.model_copy(update={"gate_ratio": gate + 0.5})})
    with pytest.raises(ConfigError, match=rf"credit.gate_ratio: {gate} != {gate + 0.5}"):
        run_one(other, "sc_kl", 1, tmp_path)
    assert (run_dir / "summary.json").exists()  # the finished run is kept


@pytest.mark.parametrize("case", ["procedural", "procedural_file", "jsonl"])
def test_resolved_config_is_what_prepare_run_records(tmp_path, case):
    """compare's reuse check relies on it: the config a run folder records is
    resolved_config(requested config, folder), for every way prompts reach a run."""
    rows = tmp_path / "rows.jsonl"
    if case == "jsonl":
        rows.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
        task = {"name": "math", "train_file": str(rows), "heldout_file": str(rows)}
    elif case == "procedural_file":
        rows.write_text(json.dumps({"id": "p0", "prompt": "3 7 25#75=", "meta": {"numbers": [3, 7, 25], "target": 75}}) + "\n")
        task = {"name": "countdown", "train_file": str(rows), "heldout_file": str(rows)}
    else:
        task = {"name": "countdown", "train_size": 100, "heldout_size": 10}
    cfg = load_config(ROOT / "deploy" / "compare_countdown.toml", {"task": task})
    run_dir = tmp_path / "run"
    prepared = prepare_run(cfg, run_dir)
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded == json.loads(resolved_config(cfg, run_dir).resolved_json()) == json.loads(prepared.resolved_json())
    for split in ("train", "heldout"):
        path = Path(recorded["task"][f"{split}_file"])
        assert path.exists() and path.is_absolute()
        assert (path == rows) == (case == "procedural_file")  # only a procedural task's own file is used in place
