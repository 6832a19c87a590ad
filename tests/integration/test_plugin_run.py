"""Plug-in rewards in a real run: `[task] reward = "arith_reward:exact_final"` (tests/plugins,
on PYTHONPATH) scores the default model's `arith` rollouts in the verifier's workers and
the model trains; a plug-in path that does not import stops `scca run` at once with one
line naming it, before any process starts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, read_jsonl, scca, sets

pytestmark = pytest.mark.integration

PLUGINS = ROOT / "tests" / "plugins"
SPEC = "arith_reward:exact_final"
STEPS = 40
RUN_TIMEOUT_S = 1500


def test_a_plugin_reward_trains_the_default_model(bootstrap_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = sets(learner={"max_steps": STEPS, "eval_every": 0, "lr": 3e-4, "checkpoint_every": 100},
                     task={"train_size": 5000, "heldout_size": 100, "reward": SPEC},
                     model={"bootstrap_dir": str(bootstrap_dir)})
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *overrides, log=tmp_path / "launcher.log",
                env={"PYTHONPATH": str(PLUGINS)})
    try:
        rc = proc.wait(RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, (tmp_path / "launcher.log").read_text()[-3000:]
    verifier_log = (run_dir / "logs" / "verifier-0.log").read_text()
    assert f"plug-in reward plugin:{SPEC}:" in verifier_log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == STEPS and summary["weights_loaded_mismatched"] == 0
    rewards = [r["reward_mean"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]
    first, last = float(np.mean(rewards[:10])), float(np.mean(rewards[-10:]))
    print(f"\nplug-in reward {SPEC}: reward first 10 steps {first:.3f}, last 10 {last:.3f}; held-out "
          f"{summary['heldout_accuracy_before']} -> {summary['heldout_accuracy_after']}")
    assert last >= first + 0.03, f"reward did not rise: {first:.3f} -> {last:.3f}"


def test_a_broken_plugin_path_fails_at_start_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "deploy.cli", "run", "deploy/default.toml", "--out", str(run_dir),
                          "--set", 'task.reward="no_such_package.rewards:score"',
                          "--set", f'model.bootstrap_dir="{tmp_path / "no-bootstrap"}"'],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "scca: [task] reward = 'no_such_package.rewards:score': cannot import module 'no_such_package.rewards' "
        "(ModuleNotFoundError: No module named 'no_such_package')"]
    assert not run_dir.exists() and not (tmp_path / "no-bootstrap").exists()  # nothing started, nothing built
