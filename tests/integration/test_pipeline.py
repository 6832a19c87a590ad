"""The whole pipeline as real processes: learner + 2 actors + 1 verifier over TCP loopback.

One short run (module fixture) is probed while it trains — garbage frames, a bad field,
an actor that lies about its weights, /metrics of every process — and checked after it
ends: held-out accuracy rose, every real actor's digest matched, the ledger balances, no process is
left behind."""

from __future__ import annotations

import json
import sqlite3
import time

import msgpack
import numpy as np
import pytest
import zmq

from conftest import metrics_ports, no_processes_with, read_jsonl, scca, scrape, sets, stop, wait_for
from protocol import messages

pytestmark = pytest.mark.integration

STEPS = 60
# GRPO from the lr-1e-3 bootstrap learns at 1e-4 (arith, measured: first-10-step reward 0.129 ->
# last-10 0.194; at 2e-4 0.100 -> 0.154); at 3e-4 it dips first (CI: 0.070 -> 0.090).
LR = 1e-4
RUN_TIMEOUT_S = 1200
# Measured on six 40-step runs of this config with full steps (16 groups each; four with the
# remote actor and the probes): the training reward (every verified sample), last 10 steps
# minus first 10, rose +0.010 (a CI run on a quiet machine), +0.048, +0.068, +0.068, +0.080,
# +0.084; held-out accuracy, the mean of EVAL_K samples on each of the same 200 prompts
# before and after (a paired measure: "before" of one model in three runs 0.124, 0.118,
# 0.119), rose +0.013, +0.026, +0.062, +0.063, +0.065, +0.076. The training reward
# plateaus near +0.07 after ~30 steps (an 80-step run: 10-step means 0.311, 0.332, 0.368,
# 0.374, 0.364, 0.386, 0.360, 0.387), so the run is 60 steps and the bound compares the
# last 20 with the first 10 (twice the steps on the plateau side); held-out: the sign. The
# first 60-step run: 10-step means 0.332, 0.338, 0.369, 0.417, 0.390, 0.404 (+0.065), held-out
# 0.118 -> 0.209.
EVAL_K = 8
REWARD_RISE = 0.02


def _probe_socket(address: str, name: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, name)
    sock.connect(address)
    return sock


def _next_error(sock: zmq.Socket, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(200):
            msg = messages.decode(sock.recv())
            if msg["kind"] == "error":
                return msg
    raise AssertionError("no error reply from the learner")


def _probes(address: str) -> dict:
    """Send what a broken or lying peer would send; collect the learner's answers."""
    out = {}
    sock = _probe_socket(address, "probe-garbage")
    sock.send(b"\xc1 this is not msgpack")
    out["garbage"] = _next_error(sock)
    bad = messages.make("work_request", "probe-garbage", 0, slots=1)
    bad["slots"] = -5  # fails validation on the learner side
    sock.send(msgpack.packb(bad))
    out["bad_field"] = _next_error(sock)
    sock.close()
    liar = _probe_socket(address, "probe-liar")
    liar.send(messages.encode(messages.make("hello", "probe-liar", 0, role="actor", name="probe-liar", capabilities={})))
    welcome = None
    while welcome is None:
        assert liar.poll(20_000), "no welcome"
        msg = messages.decode(liar.recv())
        welcome = msg if msg["kind"] == "welcome" else None
    version = welcome["weights"]["version"]
    liar.send(messages.encode(messages.make("weights_loaded", "probe-liar", 1, version=version, digest="0" * 64,
                                            canary_logprob=-1.0)))
    out["liar"] = _next_error(liar)
    liar.close()
    return out


@pytest.fixture(scope="module")
def finished_run(bootstrap_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    overrides = sets(learner={"max_steps": STEPS, "eval_every": 0, "lr": LR, "checkpoint_every": 10, "eval_samples": EVAL_K},
                     task={"train_size": 5000, "heldout_size": 200})
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *overrides, log=run_dir.parent / "launcher.log")
    try:
        ready = wait_for(lambda: (run_dir / "learner.json").exists() and json.loads((run_dir / "learner.json").read_text()),
                         300, "learner.json", proc)
        wait_for(lambda: any(r.get("step", 0) >= 3 for r in read_jsonl(run_dir / "metrics.jsonl")), 600, "step 3", proc)
        remote = scca("actor", str(run_dir / "config.json"), "--connect", ready["address"], "--name", "actor-remote",
                      *sets(actor={"weights_dir": str(run_dir.parent / "remote-weights")}),
                      log=run_dir.parent / "actor-remote.log")
        probes = _probes(ready["address"])
        scraped = {name: scrape(port) for name, port in metrics_ports(run_dir).items()}
        rc = proc.wait(RUN_TIMEOUT_S)
        remote_rc = stop(remote)
    finally:
        for p in (proc, remote):
            if p.poll() is None:
                p.kill()
    return {"dir": run_dir, "rc": rc, "remote_rc": remote_rc, "probes": probes, "scraped": scraped,
            "summary": json.loads((run_dir / "summary.json").read_text()),
            "rows": [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]}


def test_run_completes_with_its_budget(finished_run):
    s = finished_run["summary"]
    assert finished_run["rc"] == 0
    assert s["completed"] and s["steps"] == STEPS
    assert s["samples_trained"] == sum(r["groups"] for r in finished_run["rows"]) * 8
    assert s["heldout_accuracy_before"] is not None and s["heldout_accuracy_after"] is not None
    evals = read_jsonl(finished_run["dir"] / "heldout.jsonl")  # EVAL_K rewards per held-out prompt
    assert [len(e["rewards"]) for e in evals] == [200, 200] and evals[-1]["step"] == STEPS
    assert all(len(r) == EVAL_K and set(r) <= {0.0, 1.0} for e in evals for r in e["rewards"].values())
    assert s["heldout_accuracy_after"] == pytest.approx(evals[-1]["accuracy"])


def test_heldout_accuracy_rises(finished_run):
    """Mean accuracy of EVAL_K samples on each of the same 200 held-out prompts, after > before."""
    s = finished_run["summary"]
    before, after = s["heldout_accuracy_before"], s["heldout_accuracy_after"]
    assert after > before, f"held-out accuracy did not rise: {before:.3f} -> {after:.3f}"


def test_training_reward_rises(finished_run):
    """Reward of every verified sample (groups without signal included) per step: the mean of
    the last 20 steps at least REWARD_RISE above the first 10."""
    rewards = [r["reward_mean"] for r in finished_run["rows"]]
    first, last = float(np.mean(rewards[:10])), float(np.mean(rewards[-20:]))
    assert last >= first + REWARD_RISE, f"training reward did not rise: first 10 steps {first:.3f}, last 20 {last:.3f}"


def test_every_step_trains_a_full_batch(finished_run):
    """Groups without signal or past max_lag are dropped as they arrive: each step trains
    prompts_per_step groups (16 in deploy/default.toml)."""
    assert [r["groups"] for r in finished_run["rows"]] == [16] * STEPS
    assert all(max(r["lags"]) <= 1 for r in finished_run["rows"])


def test_ledger_balances(finished_run):
    ledger = finished_run["summary"]["ledger"]
    assert ledger["dispatched"] == ledger["trained"] + ledger["dropped"] + ledger["in_flight"]
    db = sqlite3.connect(finished_run["dir"] / "ledger.sqlite")
    by_state = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    assert by_state.get("trained", 0) == ledger["trained"] == sum(r["groups"] for r in finished_run["rows"])
    assert sum(by_state.values()) == ledger["dispatched"]


def test_every_actor_digest_matches(finished_run):
    events = read_jsonl(finished_run["dir"] / "weights_sync.jsonl")
    real = [e for e in events if e["peer"].startswith("actor-")]
    assert real and all(e["ok"] and e["digest"] == e["expected_digest"] for e in real)
    assert {e["peer"] for e in real} == {"actor-0", "actor-1", "actor-remote"}
    assert max(e["version"] for e in real) >= STEPS - 1
    lies = [e for e in events if e["peer"] == "probe-liar"]
    assert len(lies) == 1 and not lies[0]["ok"]
    assert finished_run["summary"]["weights_loaded_mismatched"] == 1


def test_bad_messages_answered_and_counted(finished_run):
    probes = finished_run["probes"]
    assert probes["garbage"]["code"] == "not_msgpack"
    assert probes["bad_field"]["code"] == "bad_field" and "slots" in probes["bad_field"]["message"]
    assert probes["liar"]["code"] == "quarantined"
    assert finished_run["summary"]["bad_messages"] == 2
    assert finished_run["scraped"]["learner"]["scca_learner_bad_messages"] == 2


def test_every_process_serves_metrics(finished_run):
    m = finished_run["scraped"]
    assert set(m) == {"learner", "actor-0", "actor-1", "verifier-0"}
    assert m["learner"]['scca_learner_peers_alive{role="actor"}'] >= 2
    assert m["learner"]['scca_learner_ledger_items{bucket="dispatched"}'] > 0
    for actor in ("actor-0", "actor-1"):
        assert m[actor]["scca_actor_tokens_generated_total"] > 0
        assert m[actor]["scca_actor_weights_version"] >= 0
    assert m["verifier-0"]["scca_verifier_samples_scored_total"] > 0


def test_no_process_left_behind(finished_run):
    assert wait_for(lambda: no_processes_with(str(finished_run["dir"])), 30, "children to exit")


def test_actor_without_shared_filesystem_fetches_weights_over_the_wire(finished_run):
    """actor-remote had only its own empty folder: it pulled every snapshot it loaded."""
    events = [e for e in read_jsonl(finished_run["dir"] / "weights_sync.jsonl") if e["peer"] == "actor-remote"]
    assert len(events) >= 2 and all(e["ok"] for e in events)
    fetched = sorted((finished_run["dir"].parent / "remote-weights").glob("v*/READY"))
    assert fetched, "no snapshot was fetched"
    for ready in fetched:
        ours = ready.parent / "manifest.json"
        theirs = finished_run["dir"] / "weights" / ready.parent.name / "manifest.json"
        if theirs.exists():
            assert ours.read_bytes() == theirs.read_bytes()
    assert finished_run["remote_rc"] == 0
