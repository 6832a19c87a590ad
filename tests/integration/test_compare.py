"""`scca compare` end to end: real runs (learner, actors, verifier as processes) per
method x seed, the tables written from their metrics, a re-run that reuses finished runs
and redoes an interrupted one, and the `hidden` variant fed by the actors' summaries."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import read_jsonl, scca, sets

pytestmark = pytest.mark.integration

SHORT = sets(learner={"max_steps": 4, "eval_every": 2, "checkpoint_every": 4},
             task={"train_size": 3000, "heldout_size": 50}, credit={"warmup_steps": 0, "ramp_steps": 2})


def _compare(out, tmp_path, name):
    proc = scca("compare", "deploy/compare_arith.toml", "--methods", "grpo,hidden", "--seeds", "2",
                "--out", str(out), *SHORT, log=tmp_path / f"{name}.log")
    assert proc.wait(1200) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]


def test_compare_tables_reuse_and_hidden_summaries(bootstrap_dir, tmp_path):
    out = tmp_path / "cmp"
    _compare(out, tmp_path, "first")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("grpo", "0"), ("hidden", "0"), ("grpo", "1"), ("hidden", "1")]
    for r in rows:
        run = out / f"{r['method']}-s{r['seed']}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["completed"] and summary["weights_loaded_mismatched"] == 0
        ledger = summary["ledger"]
        assert ledger["dispatched"] == ledger["trained"] + ledger["dropped"] + ledger["in_flight"]
        accs = [m["heldout_accuracy"] for m in read_jsonl(run / "metrics.jsonl") if "heldout_accuracy" in m]
        assert len(accs) == 3 and float(r["final_accuracy"]) == pytest.approx(sum(accs) / 3)
    hidden_rows = [m for m in read_jsonl(out / "hidden-s0" / "metrics.jsonl") if "credit/hidden_from_actors" in m]
    assert len(hidden_rows) == 4 and all(m["credit/hidden_from_actors"] == 1.0 for m in hidden_rows)  # HF actors sent them
    assert any(m["credit/lambda"] > 0 for m in hidden_rows)  # λ ramps up from step 0 here
    table = (out / "results.md").read_text()
    assert "| hidden | 2 |" in table and (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a re-run reuses finished runs and redoes an interrupted one from scratch
    kept = (out / "hidden-s1" / "metrics.jsonl").read_text()
    interrupted = out / "grpo-s1" / "summary.json"
    interrupted.write_text(json.dumps({**json.loads(interrupted.read_text()), "completed": False}))
    (out / "grpo-s1" / "leftover").write_text("from the interrupted run")
    _compare(out, tmp_path, "second")
    assert (out / "hidden-s1" / "metrics.jsonl").read_text() == kept
    assert json.loads(interrupted.read_text())["completed"] and not (out / "grpo-s1" / "leftover").exists()
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 4
