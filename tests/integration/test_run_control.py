"""Following a run without a terminal, and a run that stalls (issue 12).

A run on the wrong task (the arith model on countdown: every sample scores 0) warns after
`[monitor] no_signal_warn_groups` groups without learning signal and stops after
`no_signal_stop_groups` with exit code 3; `scca run` without a terminal prints one plain
progress line per step (and per `progress_every_s`), the learner logs the same lines,
and the stop is reported with its one-line reason and the learner's last log lines. A
run with no verifier stops the same way on `no_peer_stop_s`."""

from __future__ import annotations

import json
import re

import pytest

from conftest import no_processes_with, read_jsonl, scca, sets, wait_for
from faultkit import prepared_run

pytestmark = pytest.mark.integration

TINY = {"task": {"train_size": 500, "heldout_size": 8},
        "learner": {"prompts_per_step": 4, "eval_every": 0, "max_steps": 50},
        "actor": {"group_size": 4, "count": 1}}


def _stalled_run(tmp_path, extra: dict) -> tuple[int, str, dict, str]:
    run_dir = tmp_path / "run"
    cfg = {k: {**TINY.get(k, {}), **extra.get(k, {})} for k in {*TINY, *extra}}
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *sets(**cfg), log=tmp_path / "launcher.log")
    rc = proc.wait(600)
    assert wait_for(lambda: no_processes_with(str(run_dir)), 30, "no process left")
    summary = json.loads((run_dir / "summary.json").read_text())
    return rc, (tmp_path / "launcher.log").read_text(errors="replace"), summary, \
        (run_dir / "logs" / "learner.log").read_text(errors="replace")


def test_a_run_without_learning_signal_warns_then_stops_with_exit_3(bootstrap_dir, tmp_path):
    rc, out, summary, learner_log = _stalled_run(tmp_path, {
        "task": {"name": "countdown"}, "monitor": {"no_signal_warn_groups": 4, "no_signal_stop_groups": 24,
                                                  "progress_every_s": 1.0}})  # SPEED screens reach the bound in seconds
    assert rc == 3
    assert summary["stop_reason"] == "stalled" and not summary["completed"] and summary["exit_code"] == 3
    m = re.search(r"(\d+) scored groups in a row gave no learning signal \((\d+) all 0", summary["stop_message"])
    assert m and int(m.group(1)) == int(m.group(2)) >= 12 and "too hard" in summary["stop_message"]
    assert summary["steps"] == 0 and summary["dropped_reasons"].get("no_signal", 0) >= 12
    # the warning came first, with the numbers and the likely cause, echoed by the launcher
    warning = re.search(r"stall warning \(no_signal\): (\d+) scored groups in a row", learner_log)
    assert warning and 4 <= int(warning.group(1)) <= int(m.group(1)) and warning.group(0) in out
    # errors where you look: exit status, reason and the learner's last lines in the terminal
    assert f"scca: learner exited with 3: stalled: {m.group(1)} scored groups in a row" in out
    assert "last lines of" in out and "  | " in out
    # progress without a terminal: plain lines with every field, from scca run and scca learner
    lines = [line for line in out.splitlines() if " | dropped no-signal " in line]
    assert lines and all(" | samples " in line and " | ETA " in line and " | elapsed " in line for line in lines)
    assert any("dropped no-signal 0," not in line for line in lines)  # the drops show while they happen
    assert "progress: step 0/50 | samples 0" in learner_log
    assert (tmp_path / "run" / "checkpoint" / "state.json").exists()  # stopped runs checkpoint too


def test_a_run_without_a_verifier_stops_on_the_peer_bound(bootstrap_dir, tmp_path):
    rc, out, summary, learner_log = _stalled_run(tmp_path, {
        "verifier": {"count": 0}, "monitor": {"no_peer_warn_s": 10.0, "no_peer_stop_s": 25.0, "progress_every_s": 1.0}})
    assert rc == 3 and summary["stop_reason"] == "stalled"
    assert "no live verifier was connected for" in summary["stop_message"] and "scca verifier" in summary["stop_message"]
    assert "stall warning (no_verifier)" in learner_log and "stall warning (no_verifier)" in out
    assert re.search(r"\| warning: [a-z_, ]*no_verifier", out)  # the progress line shows it too


def test_the_learner_logs_progress_lines_per_step(bootstrap_dir, tmp_path):
    """`scca learner` itself (no launcher) prints one progress line per step."""
    run_dir, address = prepared_run(tmp_path, bootstrap_dir, {"learner": {"max_steps": 3}, "actor": {"count": 1}})
    cfg, logs = str(run_dir / "config.json"), run_dir / "logs"
    learner = scca("learner", cfg, "--run-dir", str(run_dir), log=logs / "learner.log")
    peers = [scca(role, cfg, "--connect", address, "--name", f"{role}-0", log=logs / f"{role}.log")
             for role in ("actor", "verifier")]
    try:
        assert learner.wait(600) == 0
        assert [p.wait(60) for p in peers] == [0, 0]  # run_over: both exit 0 on their own
    finally:
        for p in (learner, *peers):
            if p.poll() is None:
                p.kill()
    text = (logs / "learner.log").read_text()
    for step in (1, 2, 3):
        assert f"progress: step {step}/3 | samples " in text
    assert json.loads((run_dir / "progress.json").read_text())["step"] == 3
    assert len([r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]) == 3
