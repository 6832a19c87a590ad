"""Weights reach actors by torch.distributed broadcast (gloo) and by file, with publication
every 2 steps, in one real `scca run`: actor-0 is rank 1 of the learner's broadcast group,
actor-1 reads snapshot files; both prove every version they load (digest + canary)."""

from __future__ import annotations

import json

import pytest

from conftest import read_jsonl, scca, sets

pytestmark = pytest.mark.integration

STEPS = 6


def test_broadcast_and_file_actors_with_publish_every_2(bootstrap_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir),
                *sets(learner={"max_steps": STEPS, "eval_every": 0, "publish_every": 2, "broadcast_world_size": 2,
                               "checkpoint_every": 100},
                      loss={"max_lag": 2}, task={"train_size": 3000, "heldout_size": 50}),
                log=tmp_path / "launcher.log")
    assert proc.wait(1200) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == STEPS and summary["weights_loaded_mismatched"] == 0
    events = read_jsonl(run_dir / "weights_sync.jsonl")
    assert events and all(e["ok"] for e in events)
    by_actor = {name: sorted({e["version"] for e in events if e["peer"] == name}) for name in ("actor-0", "actor-1")}
    published = {0, 2, 4, 6}  # every 2 steps (the last step is one of them)
    assert set(by_actor["actor-0"]) <= published and set(by_actor["actor-1"]) <= published
    assert max(by_actor["actor-0"]) > 0, "the broadcast actor never loaded a new version"
    actor0 = (run_dir / "logs" / "actor-0.log").read_text()
    assert "joining the weights broadcast group as rank 1 of 2" in actor0
    assert actor0.count("loaded broadcast v") >= 1
    assert "joining the weights broadcast group" not in (run_dir / "logs" / "actor-1.log").read_text()
    assert "broadcast group of 2 ranks formed" in (run_dir / "logs" / "learner.log").read_text()
    kept = sorted(p.name for p in (run_dir / "weights").iterdir() if p.name.startswith("v"))
    assert kept == ["v000002", "v000004", "v000006"]
