"""Faults a real run must survive: Ctrl-C then `--resume`, and an actor killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from conftest import no_processes_with, read_jsonl, scca, sets, wait_for

pytestmark = pytest.mark.integration

SMALL = {"task": {"train_size": 3000, "heldout_size": 50}}


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def _pid_of(marker: str, name: str) -> int:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in b" ".join(cmd) and name.encode() in cmd:
                return int(p.name)
    raise AssertionError(f"no process {name}")


def test_ctrl_c_then_resume_finishes_the_budget(bootstrap_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "deploy/default.toml", "--out", str(run_dir),
            *sets(learner={"max_steps": 6, "eval_every": 0, "checkpoint_every": 1}, **SMALL)]
    proc = scca(*args, log=tmp_path / "first.log")
    wait_for(lambda: len(_steps(run_dir)) >= 3, 600, "3 steps", proc)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the launcher
    assert proc.wait(120) != 0 or not json.loads((run_dir / "summary.json").read_text())["completed"]
    assert wait_for(lambda: no_processes_with(str(run_dir)), 30, "children to exit after Ctrl-C")
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert not stopped["completed"] and 3 <= stopped["steps"] < 6
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert state["step"] == stopped["steps"]

    resumed = scca("run", "--resume", str(run_dir), log=tmp_path / "resume.log")
    assert resumed.wait(900) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 6
    ledger = summary["ledger"]
    assert ledger["dispatched"] == ledger["trained"] + ledger["dropped"] + ledger["in_flight"]
    steps = _steps(run_dir)
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    assert ledger["trained"] == sum(r["groups"] for r in rows) <= 6 * 16  # each step's groups, none twice
    assert steps[-1] == 6 and sorted(set(steps)) == list(range(1, 7))
    assert (run_dir / "weights" / "v000006" / "READY").exists()


def test_killed_actor_loses_no_rollout(bootstrap_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = sets(learner={"max_steps": 8, "eval_every": 0}, hub={"peer_timeout_s": 3.0, "work_lease_s": 30.0}, **SMALL)
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *overrides, log=tmp_path / "run.log")
    try:
        wait_for(lambda: len(_steps(run_dir)) >= 2, 600, "2 steps", proc)
        os.kill(_pid_of(str(run_dir), "actor-0"), signal.SIGKILL)
        assert proc.wait(900) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == 8
    ledger = summary["ledger"]
    assert ledger["dispatched"] == ledger["trained"] + ledger["dropped"] + ledger["in_flight"]
    db = sqlite3.connect(run_dir / "ledger.sqlite")
    retried = db.execute("SELECT COUNT(*) FROM items WHERE attempts > 1").fetchone()[0]
    lost = db.execute("SELECT COUNT(*) FROM items WHERE state='dropped' AND reason NOT IN ('stale', 'no_signal')").fetchone()[0]
    assert lost == 0
    assert retried >= 1, "the killed actor's work should have been re-dispatched"
    assert ledger["trained"] == sum(r["groups"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r)
