"""Plug-in rewards in a real run: `[task] reward = "arith_reward:brevity"` (tests/plugins, on
PYTHONPATH; shorter answers score more) scores the default model's `arith` rollouts in the
verifier's workers, and the model follows it: its completions get shorter and the
plug-in's reward rises, in training and on the held-out prompts (evaluated by the same
plug-in). A plug-in path that does not import stops `scca run` at once with one line
naming it, before any process starts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, read_jsonl, scca, sets

pytestmark = pytest.mark.integration

PLUGINS = ROOT / "tests" / "plugins"
SPEC = "arith_reward:brevity"  # dense: nearly every group carries signal, so steps are cheap
STEPS = 12  # measured: training reward 0.44 -> 0.80 by step 10, ~1.0 (empty answers) by step 17
MIN_RISE = 0.1  # plug-in reward, held-out after - before (calibration in the report)
RUN_TIMEOUT_S = 1500


def test_a_plugin_reward_trains_the_default_model(bootstrap_dir, tmp_path):
    run_dir = tmp_path / "run"
    overrides = sets(learner={"max_steps": STEPS, "eval_every": 0, "lr": 3e-4, "checkpoint_every": 100,
                              "eval_samples": 4},  # held-out: mean plug-in reward of 4 samples per prompt
                     loss={"drop_no_signal": False},  # a saturated reward must not stall collection
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
    before, after = summary["heldout_accuracy_before"], summary["heldout_accuracy_after"]
    print(f"\nplug-in reward {SPEC}: training reward first 5 steps {np.mean(rewards[:5]):.3f}, last 5 "
          f"{np.mean(rewards[-5:]):.3f}; held-out {before:.3f} -> {after:.3f}")
    assert after >= before + MIN_RISE, f"held-out plug-in reward {before:.3f} -> {after:.3f}"
    assert np.mean(rewards[-5:]) > np.mean(rewards[:5])


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
