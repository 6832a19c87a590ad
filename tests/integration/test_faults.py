"""Ten injected faults a real run survives (issue 12), each asserting its own numbers plus the
accounting of `faultkit.check_accounting`: the ledger balances, no rollout is lost or
trained twice, versions only go up, and the run ends with its stated reason.

Three real runs carry them, each fault measured on its own:
* run A, `scca run` (2 actors, 2 verifiers): 1 verifier SIGKILL mid-job, 4 a scorer slower
  than the job timeout, 3 actor SIGSTOP past its lease then SIGCONT, 7 an actor reporting
  a wrong digest, 10 a flood of valid but unwanted messages; then Ctrl-C (exit 130,
  checkpoint at the current step) and `scca run --resume` to the end.
* run B, services started one by one on a fixed port (as on several hosts): 8 the ledger
  locked by another process, 6 a corrupted snapshot on disk, 2 learner SIGKILL while it
  publishes, then `scca learner --resume`; actors and verifier keep reconnecting while it
  is gone and exit 0 when it says the run is over.
* run C, the same services in a mount namespace whose weights folder is a small tmpfs:
  9 the disk fills up on snapshot writes.
Fault 5 (a crash during a weight publish, 20 kills between files) runs the real publish in
a child process that is SIGKILLed at 20 points, with a real actor engine reading."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from conftest import ROOT, no_processes_with, read_jsonl, scca, scrape, sets, wait_for
from faultkit import (LEAN, alive, check_accounting, children_of, kill_when_publishing, ledger, log_times, merge,
                      metrics_port, peer_versions, pid_of, prepared_run, steps)
from protocol import messages

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REPORT: dict[str, dict] = {}  # numbers per fault, printed at the end of each test (pytest -s)


def _report(fault: str, **numbers) -> None:
    REPORT[fault] = numbers
    print(f"\nFAULT {fault}: {json.dumps(numbers, sort_keys=True)}")


def _at_step(run_dir: Path, n: int, proc, timeout: float = 600) -> dict:
    return wait_for(lambda: next((r for r in steps(run_dir) if r["step"] >= n), None), timeout, f"step {n}", proc)


def _steps_after(run_dir: Path, t: float, n: int, proc, timeout: float = 300) -> float:
    """Seconds from `t` until n more steps completed."""
    rows = wait_for(lambda: (lambda rs: rs if len(rs) >= n else None)([r for r in steps(run_dir) if r["time"] > t]),
                    timeout, f"{n} steps after the fault", proc)
    return rows[n - 1]["time"] - t


# ======================================================================== run A: scca run
STEPS_A = 240  # the faults take ~60-100 s; the steps must outlast them on a fast machine too (36 took 26 s here)
HUB_A = {"heartbeat_s": 0.5, "peer_timeout_s": 4.0, "work_lease_s": 6.0, "verify_lease_s": 8.0}
ACTOR_STOP_S = 9.0  # > work_lease_s: the actor comes back after its lease ran out


def _frozen_holding(pid: int, run_dir: Path, peer: str, state: str, timeout: float = 120) -> list[str]:
    """SIGSTOP `pid` at a moment the ledger shows it holding work in `state`; the ids."""
    query = "SELECT item_id FROM items WHERE state=? AND peer=?"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger(run_dir, query, (state, peer)):
            os.kill(pid, signal.SIGSTOP)
            held = [r[0] for r in ledger(run_dir, query, (state, peer))]  # frozen: only the hub can move them now
            if held:
                return held
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{peer} never held work in state {state}")


def fault_verifier_kill(run_dir: Path, proc) -> dict:
    """1: a verifier SIGKILLed while it holds a job (frozen first, so the job is surely its)."""
    pid = pid_of(str(run_dir), "verifier-1")
    held = _frozen_holding(pid, run_dir, "verifier-1", "generated")
    os.kill(pid, signal.SIGKILL)
    t = time.time()
    wait_for(lambda: not ledger(run_dir, "SELECT 1 FROM items WHERE state='generated' AND peer='verifier-1'"),
             120, "verifier-1's jobs to be re-sent", proc)
    resent_s = time.time() - t
    marks = ",".join("?" * len(held))
    wait_for(lambda: not ledger(run_dir, f"SELECT 1 FROM items WHERE item_id IN ({marks}) AND state='generated'",
                                tuple(held)), 120, "the re-sent jobs to be scored", proc)
    return {"held": held, "resent_s": resent_s, "scored_s": time.time() - t, "next_step_s": _steps_after(run_dir, t, 1, proc)}


def fault_scorer_hang(run_dir: Path, proc) -> dict:
    """4: the scorer of verifier-0 hangs (SIGSTOP of its worker process): the job times out
    after [verifier] completion_timeout_s, the stuck worker is replaced, scoring goes on."""
    pid = pid_of(str(run_dir), "verifier-0")
    port = metrics_port(run_dir, "verifier-0")
    workers = wait_for(lambda: children_of(pid, b"spawn_main"), 60, "a scorer worker", proc)
    before = scrape(port).get("scca_verifier_timeouts_total", 0.0)
    os.kill(workers[0], signal.SIGSTOP)
    t = time.time()
    wait_for(lambda: scrape(port).get("scca_verifier_timeouts_total", 0.0) > before, 120, "a job timeout", proc)
    timed_out_s = time.time() - t
    wait_for(lambda: not alive(workers[0]), 30, "the stuck worker to be killed", proc)
    next_step_s = _steps_after(run_dir, t, 1, proc)
    return {"worker": workers[0], "timed_out_s": timed_out_s, "timeouts": scrape(port)["scca_verifier_timeouts_total"]
            - before, "next_step_s": next_step_s, "new_workers": children_of(pid, b"spawn_main")}


def fault_actor_stop(run_dir: Path, proc) -> dict:
    """3: actor-0 hangs (SIGSTOP: its heartbeats stop) past its work lease, then SIGCONT."""
    pid = pid_of(str(run_dir), "actor-0")
    held = _frozen_holding(pid, run_dir, "actor-0", "dispatched")
    t0 = time.time()
    marks = ",".join("?" * len(held))
    moved = wait_for(lambda: all(n > 1 for (n,) in ledger(run_dir, f"SELECT attempts FROM items WHERE item_id IN ({marks})",
                                                          tuple(held))), 60, "actor-0's work re-dispatched", proc)
    redispatched_s = time.time() - t0
    time.sleep(max(0.0, ACTOR_STOP_S - (time.time() - t0)))
    os.kill(pid, signal.SIGCONT)
    t1 = time.time()
    learner_log = run_dir / "logs" / "learner.log"
    wait_for(lambda: any(t > t1 for t in log_times(learner_log, "peer actor-0 joined")), 60, "actor-0 to rejoin", proc)
    rejoin_s = time.time() - t1
    wait_for(lambda: any(e["peer"] == "actor-0" and e["ok"] and e["time"] > t1
                         for e in read_jsonl(run_dir / "weights_sync.jsonl")), 60, "actor-0 to load weights again", proc)
    return {"held": held, "moved": moved, "redispatched_s": redispatched_s, "stopped_s": t1 - t0,
            "rejoin_s": rejoin_s, "serving_again_s": time.time() - t1}


def _dealer(address: str, name: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, name)
    sock.connect(address)
    return sock


def _hello(sock: zmq.Socket, name: str, role: str) -> dict:
    sock.send(messages.encode(messages.make("hello", name, 0, role=role, name=name, capabilities={})))
    while True:
        assert sock.poll(30_000), "no welcome"
        msg = messages.decode(sock.recv())
        if msg["kind"] == "welcome":
            return msg


def fault_liar(address: str, run_dir: Path) -> dict:
    """7: an actor that reports a wrong digest is quarantined and gets no work."""
    sock = _dealer(address, "liar-actor")
    try:
        welcome = _hello(sock, "liar-actor", "actor")
        version = welcome["weights"]["version"]
        sock.send(messages.encode(messages.make("weights_loaded", "liar-actor", 1, version=version, digest="0" * 64,
                                                canary_logprob=-1.0)))
        sock.send(messages.encode(messages.make("work_request", "liar-actor", 2, slots=8)))
        got, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline:
            if sock.poll(200):
                got.append(messages.decode(sock.recv()))
        errors = [m["code"] for m in got if m["kind"] == "error"]
        return {"errors": errors, "work": sum(m["kind"] == "work" for m in got), "version": version}
    finally:
        sock.close()


FLOOD_EACH = 1500  # messages per unwanted kind


def _sample() -> dict:
    import numpy as np

    return {"token_ids": np.array([5, 6, 2], np.int32), "logprobs": np.array([-1.0, -0.5, -0.1], np.float32),
            "entropy": None, "hidden": None, "finish_reason": "stop", "text": "12"}


def fault_flood(address: str, run_dir: Path, proc) -> dict:
    """10: three peers that never read flood the learner with valid messages it does not
    want; it counts each, answers at most one error per peer per second, keeps training."""
    port = json.loads((run_dir / "learner.json").read_text())["metrics_port"]

    def by_reason() -> dict[str, float]:
        prefix = 'scca_learner_unwanted_messages_total{reason="'
        return {k[len(prefix):-2]: v for k, v in scrape(port).items() if k.startswith(prefix)}

    def unwanted() -> float:
        return sum(by_reason().values())

    before, reasons_before = unwanted(), by_reason()
    anon, verifier, actor = _dealer(address, "flood-anon"), _dealer(address, "flood-verifier"), _dealer(address, "flood-actor")
    try:
        _hello(verifier, "flood-verifier", "verifier")
        welcome = _hello(actor, "flood-actor", "actor")
        version = welcome["weights"]["version"]
        digest = json.loads((Path(welcome["weights"]["folder"]) / "manifest.json").read_text())["param_digest"]
        t = time.time()
        sent = 0
        for i in range(FLOOD_EACH):
            m = messages.make
            anon.send(messages.encode(m("heartbeat", "flood-anon", i)))
            verifier.send(messages.encode(m("verdicts", "flood-verifier", i, job_id=f"ghost-{i}" if i % 2 else "eval-x",
                                            rewards=[1.0], details=[{}], verifier_version="x")))
            actor.send(messages.encode(m("weights_loaded", "flood-actor", 3 * i, version=10**6, digest="0" * 64,
                                         canary_logprob=-1.0)))
            actor.send(messages.encode(m("welcome", "flood-actor", 3 * i + 1, run_id="x", weights=None)))
            actor.send(messages.encode(m("rollout_group", "flood-actor", 3 * i + 2, work_id=f"ghost@{i}",
                                         prompt_id="ghost", weights_version=version, weights_digest=digest,
                                         gen_seconds=0.1, samples=[_sample()] * 4)))
            sent += 5
        flood_s = time.time() - t
        wait_for(lambda: unwanted() - before >= sent, 120, "every unwanted message counted", proc, poll=0.5)
        counted_s = time.time() - t
        replies = {}
        for name, sock in (("anon", anon), ("verifier", verifier), ("actor", actor)):
            n = 0
            while sock.poll(0):
                msg = messages.decode(sock.recv())
                n += msg["kind"] == "error"
            replies[name] = n
        reasons = {k: int(v - reasons_before.get(k, 0.0)) for k, v in by_reason().items() if v > reasons_before.get(k, 0.0)}
        return {"sent": sent, "counted": unwanted() - before, "by_reason": reasons, "flood_s": flood_s, "counted_s": counted_s,
                "error_replies": replies, "steps_during": len([r for r in steps(run_dir) if t < r["time"] < t + counted_s]),
                "next_step_s": _steps_after(run_dir, t, 1, proc)}
    finally:
        for sock in (anon, verifier, actor):
            sock.close()


@pytest.fixture(scope="module")
def run_a(bootstrap_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fault-a") / "run"
    cfg = merge(LEAN, {"learner": {"max_steps": STEPS_A}, "hub": HUB_A,
                        "verifier": {"count": 2, "completion_timeout_s": 4.0}})
    log = run_dir.parent / "launcher.log"
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *sets(**cfg), log=log)
    facts, resumed = {}, None
    try:
        _at_step(run_dir, 2, proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: checkpoint at the current step, exit 130
        t = time.time()
        facts["sigint_rc"] = proc.wait(180)
        facts["sigint_s"] = time.time() - t
        facts["stopped"] = json.loads((run_dir / "summary.json").read_text())
        facts["checkpoint"] = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        facts["left_behind"] = not wait_for(lambda: no_processes_with(str(run_dir)), 30, "no process left", None)
        facts["stop_log"] = log.read_text(errors="replace")
        resumed = scca("run", "--resume", str(run_dir), log=run_dir.parent / "resume.log")
        _at_step(run_dir, facts["stopped"]["steps"] + 2, resumed)
        facts["verifier_kill"] = fault_verifier_kill(run_dir, resumed)
        facts["scorer_hang"] = fault_scorer_hang(run_dir, resumed)
        facts["actor_stop"] = fault_actor_stop(run_dir, resumed)
        address = json.loads((run_dir / "learner.json").read_text())["address"]
        facts["liar"] = fault_liar(address, run_dir)
        facts["flood"] = fault_flood(address, run_dir, resumed)
        facts["last_fault_step"] = steps(run_dir)[-1]["step"]
        facts["resume_rc"] = resumed.wait(900)
        facts["resume_log"] = (run_dir.parent / "resume.log").read_text(errors="replace")
    finally:
        for p in (proc, resumed):
            if p is not None and p.poll() is None:
                p.kill()
    facts["dir"] = run_dir
    facts["summary"] = json.loads((run_dir / "summary.json").read_text())
    return facts


def test_ctrl_c_checkpoints_the_current_step_and_resume_finishes(run_a):
    """SIGINT: exit 130, summary says interrupted, checkpoint at the step reached, no
    process left; `scca run --resume` continues from that step to the budget."""
    stopped, state = run_a["stopped"], run_a["checkpoint"]
    assert run_a["sigint_rc"] == 130
    assert stopped["interrupted"] and stopped["stop_reason"] == "interrupted" and not stopped["completed"]
    assert state["step"] == stopped["steps"] >= 2
    assert "run interrupted (SIGINT: checkpointed at step" in run_a["stop_log"] and "scca run --resume" in run_a["stop_log"]
    assert not run_a["left_behind"]
    assert run_a["resume_rc"] == 0 and run_a["last_fault_step"] < STEPS_A
    numbers = check_accounting(run_a["dir"])
    assert numbers["replayed_steps"] == 0  # a checkpoint at the current step: nothing done twice
    _report("ctrl-c + resume", exit_code=run_a["sigint_rc"], stopped_at=stopped["steps"], stop_s=round(run_a["sigint_s"], 1),
            **numbers)


def test_fault_1_verifier_killed_mid_job(run_a):
    f = run_a["verifier_kill"]
    held = f["held"]
    marks = ",".join("?" * len(held))
    states = dict(ledger(run_a["dir"], f"SELECT state, COUNT(*) FROM items WHERE item_id IN ({marks}) GROUP BY state", tuple(held)))
    assert set(states) <= {"scored", "trained", "dropped"} and sum(states.values()) == len(held)  # none lost
    assert "verifier-1 killed by SIGKILL" in run_a["resume_log"]  # reported where the user looks
    numbers = check_accounting(run_a["dir"])
    _report("1 verifier SIGKILL mid-job", jobs_held=len(held), resent_s=round(f["resent_s"], 1),
            scored_again_s=round(f["scored_s"], 1), next_step_s=round(f["next_step_s"], 1), **numbers)


def test_fault_4_scorer_slower_than_its_job_timeout(run_a):
    f = run_a["scorer_hang"]
    assert f["timeouts"] >= 1 and f["timed_out_s"] < 4.0 + 10  # completion_timeout_s, plus the next job's arrival
    assert f["worker"] not in f["new_workers"]
    numbers = check_accounting(run_a["dir"])
    _report("4 scorer past job timeout", timeouts=f["timeouts"], timed_out_after_s=round(f["timed_out_s"], 1),
            next_step_s=round(f["next_step_s"], 1), **numbers)


def test_fault_3_actor_hung_past_its_lease_then_back(run_a):
    f = run_a["actor_stop"]
    held = f["held"]
    marks = ",".join("?" * len(held))
    rows = ledger(run_a["dir"], f"SELECT state, attempts FROM items WHERE item_id IN ({marks})", tuple(held))
    assert len(rows) == len(held) and all(attempts > 1 for _, attempts in rows)  # each re-dispatched, none lost
    assert f["stopped_s"] >= HUB_A["work_lease_s"] and f["redispatched_s"] < HUB_A["work_lease_s"] + 2
    assert f["rejoin_s"] < 30
    numbers = check_accounting(run_a["dir"])
    _report("3 actor SIGSTOP past lease, SIGCONT", groups_held=len(held), redispatched_s=round(f["redispatched_s"], 1),
            stopped_s=round(f["stopped_s"], 1), rejoined_s=round(f["rejoin_s"], 1),
            serving_again_s=round(f["serving_again_s"], 1), **numbers)


def test_fault_7_actor_with_a_wrong_digest_is_quarantined(run_a):
    f = run_a["liar"]
    assert "quarantined" in f["errors"] and f["work"] == 0
    assert run_a["summary"]["weights_loaded_mismatched"] == 1
    assert not ledger(run_a["dir"], "SELECT 1 FROM items WHERE peer='liar-actor'")
    assert all(e["ok"] for e in read_jsonl(run_a["dir"] / "weights_sync.jsonl") if e["peer"].startswith("actor-"))
    numbers = check_accounting(run_a["dir"])
    _report("7 wrong digest", quarantined=1, work_sent_to_it=f["work"], **numbers)


def test_fault_10_flood_of_unwanted_messages(run_a):
    f = run_a["flood"]
    assert f["counted"] == f["sent"] == 5 * FLOOD_EACH
    assert f["by_reason"] == {"not_registered": FLOOD_EACH, "unknown_job": FLOOD_EACH, "unknown_version": FLOOD_EACH,
                              "unexpected_kind": FLOOD_EACH, "unknown_work": FLOOD_EACH}
    assert all(n >= f["by_reason"][k] for k, n in run_a["summary"]["unwanted_messages"].items() if k in f["by_reason"])
    for name, n in f["error_replies"].items():  # at most one error per peer per second, never one per message
        assert n <= f["counted_s"] + 2, (name, n)
    assert not ledger(run_a["dir"], "SELECT 1 FROM items WHERE peer LIKE 'flood-%'")
    numbers = check_accounting(run_a["dir"])
    _report("10 flood", sent=f["sent"], counted=f["counted"], flood_s=round(f["flood_s"], 1),
            all_counted_s=round(f["counted_s"], 1), error_replies=f["error_replies"], steps_during=f["steps_during"],
            next_step_s=round(f["next_step_s"], 1), **numbers)


# ============================================== run B: services started one by one (hosts)
STEPS_B = 16
HUB_B = {"heartbeat_s": 0.5, "peer_timeout_s": 12.0, "work_lease_s": 20.0, "verify_lease_s": 20.0}
LOCK_S = 8.0  # > sqlite's default 5 s busy timeout, < peer_timeout_s
HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def fault_ledger_lock(run_dir: Path, learner) -> dict:
    """8: another process holds a write lock on the ledger for LOCK_S seconds."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / "ledger.sqlite"), str(LOCK_S)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    t = time.time()
    assert holder.wait(LOCK_S + 30) == 0
    released = time.time()
    return {"held_s": released - t, "next_step_after_release_s": _steps_after(run_dir, released, 1, learner)}


def fault_corrupt_snapshot(run_dir: Path, actors: list, learner) -> dict:
    """6: a snapshot file corrupted on disk before the actors load it: both are frozen
    while a new version is written, its model.safetensors gets flipped bytes, then they go
    on (the learner frozen meanwhile, so no newer snapshot overtakes it). Each must refuse
    it (checksum), keep serving its weights, and load the next good one."""
    weights = run_dir / "weights"
    tmp = wait_for(lambda: [p.name for p in weights.iterdir() if p.name.startswith(".tmp-v")], 300, "a publish",
                   learner, poll=0.002)
    for a in actors:
        os.kill(a.pid, signal.SIGSTOP)
    frozen = time.time()
    first = int(tmp[0][len(".tmp-v"):].split("-")[0])  # the version being written as they froze

    def quiet() -> bool:  # no publish in progress, and nothing new for a second
        busy = any(p.name.startswith(".tmp-v") for p in weights.iterdir())
        return not busy and time.time() - max(p.stat().st_mtime for p in weights.glob("v*/READY")) > 1.0

    wait_for(quiet, 60, "the publish to finish", learner)
    corrupted = []
    for folder in sorted(weights.glob("v*")):  # every snapshot that became READY while the actors were frozen
        if (folder / "READY").exists() and int(folder.name[1:]) >= first:
            with open(folder / "model.safetensors", "r+b") as f:
                f.seek(f.seek(0, 2) // 2)
                f.write(b"\xde\xad\xbe\xef" * 4)
            corrupted.append(int(folder.name[1:]))
    assert corrupted, f"nothing new to corrupt (v{first} was being written)"
    os.kill(learner.pid, signal.SIGSTOP)  # no newer snapshot may overtake the corrupted one in their queues
    for a in actors:
        os.kill(a.pid, signal.SIGCONT)
    t = time.time()
    try:
        refusal = f"refusing weights v{max(corrupted)}: corrupted: model.safetensors checksum mismatch"
        wait_for(lambda: all(refusal in (run_dir / "logs" / f"actor-{i}.log").read_text(errors="replace")
                             for i in range(len(actors))), 60, "both actors to refuse the corrupted snapshot")
    finally:
        os.kill(learner.pid, signal.SIGCONT)

    def recovered() -> bool:
        later = [e for e in read_jsonl(run_dir / "weights_sync.jsonl") if e["ok"] and e["time"] > t
                 and e["version"] > max(corrupted)]
        return {e["peer"] for e in later} >= {"actor-0", "actor-1"}

    wait_for(recovered, 300, "both actors on a good snapshot again", learner)
    return {"corrupted": corrupted, "frozen_s": t - frozen, "recovered_s": time.time() - t}


@pytest.fixture(scope="module")
def run_b(bootstrap_dir, tmp_path_factory):
    run_dir, address = prepared_run(tmp_path_factory.mktemp("fault-b"), bootstrap_dir, {
        "learner": {"max_steps": STEPS_B, "checkpoint_every": 3}, "hub": HUB_B})
    cfg, logs = str(run_dir / "config.json"), run_dir / "logs"
    learner = scca("learner", cfg, "--run-dir", str(run_dir), log=logs / "learner.log")
    peers = {name: scca(role, cfg, "--connect", address, "--name", name, log=logs / f"{name}.log")
             for role, name in (("actor", "actor-0"), ("actor", "actor-1"), ("verifier", "verifier-0"))}
    facts, resumed = {}, None
    try:
        _at_step(run_dir, 2, learner)
        facts["lock"] = fault_ledger_lock(run_dir, learner)
        # Two steps on fresh groups first: while the lock held the learner, it heard no peer, so
        # freezing the actors at once would leave them less than peer_timeout_s before they are
        # dropped, and a dropped actor needs the (then frozen) learner to rejoin.
        _steps_after(run_dir, time.time(), 2, learner)
        facts["corrupt"] = fault_corrupt_snapshot(run_dir, [peers["actor-0"], peers["actor-1"]], learner)
        facts["kill"] = kill_when_publishing(run_dir, learner.pid, 300)  # 2 (and 5 in a real run)
        facts["killed_at_step"] = steps(run_dir)[-1]["step"]
        assert learner.wait(30) == -signal.SIGKILL
        time.sleep(3.0)
        facts["peers_alive_while_gone"] = {n: p.poll() is None for n, p in peers.items()}
        t = time.time()
        resumed = scca("learner", cfg, "--run-dir", str(run_dir), "--resume", log=logs / "learner-resumed.log")
        _at_step(run_dir, facts["killed_at_step"] + 1, resumed)
        facts["first_step_after_restart_s"] = time.time() - t
        facts["resumed_rc"] = resumed.wait(900)
        ended = time.time()
        facts["peer_rcs"] = {n: p.wait(60) for n, p in peers.items()}
        facts["peers_exit_s"] = time.time() - ended
    finally:
        for p in (learner, resumed, *peers.values()):
            if p is not None and p.poll() is None:
                p.kill()
    facts["dir"] = run_dir
    facts["summary"] = json.loads((run_dir / "summary.json").read_text())
    return facts


def test_fault_8_ledger_locked_by_another_process(run_b):
    """The learner waits for the lock (logged with the seconds), then goes on; nothing else
    is disturbed (summary.json counts the last session only: the lock was in the first)."""
    f = run_b["lock"]
    assert f["held_s"] >= LOCK_S - 0.5
    log = (run_b["dir"] / "logs" / "learner.log").read_text(errors="replace")
    waits = [float(w) for w in re.findall(r"ledger statement waited ([\d.]+)s for .*ledger\.sqlite", log)]
    assert waits and max(waits) <= LOCK_S + 1
    numbers = check_accounting(run_b["dir"])
    _report("8 ledger locked", locked_s=round(f["held_s"], 1), longest_wait_s=max(waits),
            next_step_after_release_s=round(f["next_step_after_release_s"], 1), **numbers)


def test_fault_6_corrupted_snapshot_is_refused_and_the_next_one_loads(run_b):
    f = run_b["corrupt"]
    refused = []
    for actor in ("actor-0", "actor-1"):
        text = (run_b["dir"] / "logs" / f"{actor}.log").read_text(errors="replace")
        refused += [v for v in f["corrupted"] if f"refusing weights v{v}: corrupted: model.safetensors checksum mismatch" in text]
    assert len(refused) >= 2  # each actor refused what it was told to load
    learner_log = (run_b["dir"] / "logs" / "learner.log").read_text(errors="replace")
    assert len(re.findall(r"peer actor-\d reported error bad_weights: corrupted: model\.safetensors", learner_log)) >= 2
    # a refused newest snapshot is written again by the learner (hub.REPUBLISH_MIN_S); only that
    # rewrite of a corrupted version may be loaded, and every load proves its digest
    republished = {int(v) for v in re.findall(r"refused the newest snapshot: publishing v(\d+) again", learner_log)}
    for peer, versions in peer_versions(run_b["dir"]).items():
        assert not (set(versions) & set(f["corrupted"])) - republished, f"{peer} loaded a corrupted snapshot"
    events = [e for e in read_jsonl(run_b["dir"] / "weights_sync.jsonl") if e["ok"]]
    assert events and all(e["digest"] == e["expected_digest"] for e in events)
    numbers = check_accounting(run_b["dir"])
    _report("6 corrupted snapshot", corrupted=f["corrupted"], refusals=len(refused), republished=sorted(republished),
            recovered_s=round(f["recovered_s"], 1), **numbers)


def test_fault_2_learner_killed_mid_publish_then_resumed(run_b):
    f = run_b["kill"]
    assert f["tmp"] or f["unready"], f"the kill did not land inside a publish: {f}"
    assert all(run_b["peers_alive_while_gone"].values()), run_b["peers_alive_while_gone"]
    assert run_b["resumed_rc"] == 0
    assert run_b["peer_rcs"] == {"actor-0": 0, "actor-1": 0, "verifier-0": 0}  # run_over: they exit 0
    assert run_b["peers_exit_s"] < 30
    on_disk = max(int(n[1:]) for n in f["unready"] + f["ready"])  # a temp folder never became a version
    resumed_log = (run_b["dir"] / "logs" / "learner-resumed.log").read_text(errors="replace")
    m = re.search(r"resuming at step (\d+) \(checkpoint v(\d+), published as v(\d+)\)", resumed_log)
    # versions only go up: past every version the dead learner wrote, except its checkpoint's own version
    # (the kill landed in the next publish), which names the same weights and is served again
    checkpoint_v, published = (int(m.group(2)), int(m.group(3))) if m else (-1, -1)
    assert published > on_disk or published == on_disk == checkpoint_v, (m and m.group(0), on_disk)
    assert not list((run_b["dir"] / "weights").glob(".tmp-v*"))  # the dead publish's leftovers were cleaned up
    numbers = check_accounting(run_b["dir"])
    assert numbers["replayed_steps"] == run_b["killed_at_step"] - int(m.group(1))
    _report("2 learner SIGKILL mid-publish + resume", killed_at_step=run_b["killed_at_step"],
            resumed_from_step=int(m.group(1)), published_as=int(m.group(3)), left_on_disk=f["tmp"] + f["unready"],
            first_step_after_restart_s=round(run_b["first_step_after_restart_s"], 1),
            peers_exit_after_run_over_s=round(run_b["peers_exit_s"], 1), **numbers)


# ====================================== run C: the weights folder on a small tmpfs (disk full)
# Room for 3.5 snapshots while the run wants KEEP_C: every few publishes the disk is full. Not
# 2.5: an actor's model made by from_pretrained keeps the first snapshot's file mapped, so
# deleting it frees nothing on the tmpfs while that actor lives (measured: retries failed).
TMPFS_SNAPSHOTS = 3.5
KEEP_C = 5
NAMESPACE = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
RUN_C = """
mount -t tmpfs -o size={size} scca-full {run}/weights || exit 97
{py} -m deploy.cli learner {run}/config.json --run-dir {run} > {run}/logs/learner.log 2>&1 & L=$!
{py} -m deploy.cli actor {run}/config.json --connect {address} --name actor-0 > {run}/logs/actor-0.log 2>&1 & A=$!
{py} -m deploy.cli verifier {run}/config.json --connect {address} --name verifier-0 > {run}/logs/verifier-0.log 2>&1 & V=$!
wait $L; echo "learner=$?"; wait $A; echo "actor=$?"; wait $V; echo "verifier=$?"
df -B1 {run}/weights | tail -1
"""


@pytest.fixture(scope="module")
def run_c(bootstrap_dir, tmp_path_factory):
    snapshot = sum(p.stat().st_size for p in bootstrap_dir.iterdir() if p.is_file()) + 16_384
    run_dir, address = prepared_run(tmp_path_factory.mktemp("fault-c"), bootstrap_dir, {
        "learner": {"max_steps": 8, "checkpoint_every": 4, "keep_snapshots": KEEP_C},
        "actor": {"count": 1}, "hub": {"heartbeat_s": 0.5, "peer_timeout_s": 10.0},
        "monitor": {"no_signal_stop_groups": 300}})
    (run_dir / "weights").mkdir()
    script = RUN_C.format(size=int(snapshot * TMPFS_SNAPSHOTS), run=run_dir, address=address, py=sys.executable)
    t = time.time()
    r = subprocess.run([*NAMESPACE, "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900)
    summary = run_dir / "summary.json"
    return {"dir": run_dir, "out": r.stdout, "err": r.stderr, "rc": r.returncode, "wall_s": time.time() - t,
            "snapshot": snapshot, "summary": json.loads(summary.read_text()) if summary.exists() else {}}


def test_fault_9_disk_full_on_snapshot_write(run_c):
    """The tmpfs holds 3.5 snapshots, keep_snapshots wants 5: a write fails with ENOSPC, is
    reported, the old snapshots are pruned, the write is retried and the run goes on; no
    actor ever loads a broken snapshot; everyone exits 0 at the end."""
    assert run_c["rc"] == 0, run_c["err"][-2000:]
    codes = dict(line.split("=") for line in run_c["out"].splitlines() if "=" in line)
    assert codes == {"learner": "0", "actor": "0", "verifier": "0"}, run_c["out"]
    log = (run_c["dir"] / "logs" / "learner.log").read_text(errors="replace")
    reported = re.findall(r"snapshot v(\d+) not written: .*(os error 28|No space left)", log)
    survived = re.findall(r"snapshot v(\d+) written after freeing space", log)
    assert reported and survived and {v for v, _ in reported} == set(survived)
    assert run_c["summary"]["publish_failures"] == 0  # every publish got through on its retry
    events = read_jsonl(run_c["dir"] / "weights_sync.jsonl")
    assert events and all(e["ok"] for e in events)
    numbers = check_accounting(run_c["dir"])
    _report("9 disk full on snapshot write", tmpfs_bytes=int(run_c["snapshot"] * TMPFS_SNAPSHOTS), enospc_reported=len(reported),
            written_after_pruning=len(survived), loads_ok=len(events), wall_s=round(run_c["wall_s"], 1), **numbers)


# ================================= fault 5: a crash during a weight publish, 20 times
KILLS = 20


def _hook_fsyncs(stop_after: int | None, counter: Path | None = None) -> None:
    """In a child process: count the publish's fsyncs (files, then folders); SIGSTOP right
    after the `stop_after`-th, so the parent's SIGKILL lands exactly there."""
    import protocol.weights as W

    calls = [0]
    for name in ("_fsync_file", "_fsync_dir"):
        real = getattr(W, name)

        def step(path, real=real):
            real(path)
            calls[0] += 1
            if counter is not None:
                counter.write_text(str(calls[0]))
            if calls[0] == stop_after:
                os.kill(os.getpid(), signal.SIGSTOP)

        setattr(W, name, step)


def _publish_child(root: Path, version: int, model, tok, stop_after: int | None, counter: Path | None) -> None:
    from protocol.weights import publish_snapshot

    _hook_fsyncs(stop_after, counter)
    publish_snapshot(root, version, model, tok, keep=3)
    os._exit(0)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_fault_5_crash_during_weight_publish_20_times(bootstrap_dir, tmp_path):
    """The learner's publish (the real code, in a forked child) is SIGKILLed 20 times: ten
    times while the files are being written (the temp folder holds 1..5 files), ten times
    exactly after the k-th fsync (between synced files, after the rename before READY,
    after READY). After each kill a real actor engine is pointed at every folder on disk
    (temp ones too): it loads only READY, checksum-clean snapshots and keeps serving its
    version otherwise; the newest READY snapshot verifies; the restarted learner's publish
    cleans up and writes a good snapshot."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the forked children never wait on an OpenMP pool they did not inherit
    try:
        _twenty_kills(bootstrap_dir, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _twenty_kills(bootstrap_dir: Path, tmp_path: Path) -> None:
    import multiprocessing

    from actors.engines.hf import HFEngine
    from learner.snapshots import version_folders
    from protocol.weights import WeightsError, latest_snapshot, publish_snapshot, verify_snapshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(bootstrap_dir), AutoTokenizer.from_pretrained(bootstrap_dir)
    root = tmp_path / "weights"
    engine = HFEngine(Path(publish_snapshot(root, 0, model, tok)["folder"]))
    ctx = multiprocessing.get_context("fork")
    counter = tmp_path / "fsyncs"
    probe = ctx.Process(target=_publish_child, args=(tmp_path / "probe", 0, model, tok, None, counter))
    probe.start(), probe.join(120)
    total = int(counter.read_text())  # fsyncs in one whole publish
    outcomes, refused, loaded = [], 0, 0
    for kill in range(KILLS):
        version = max(v for v, _ in version_folders(root)) + 1
        stop_after = 1 + (kill // 2) * (total - 1) // 9 if kill % 2 else None  # 1 .. total, spread
        child = ctx.Process(target=_publish_child, args=(root, version, model, tok, stop_after, None))
        child.start()
        if stop_after is None:
            want = 1 + (kill // 2) % 5
            wait_for(lambda: any(len(list(p.iterdir())) >= want for p in root.glob(".tmp-v*")), 120, "files written",
                     poll=0.001)
        else:
            wait_for(lambda: _state(child.pid) == "T", 120, f"fsync {stop_after} of {total}")
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        tmp = sorted(len(list(p.iterdir())) for p in root.glob(".tmp-v*"))
        final = root / f"v{version:06d}"
        outcomes.append(f"tmp{tmp}" if tmp else "ready" if (final / "READY").exists()
                        else "unready" if final.exists() else "nothing")
        serving = (engine.version, engine.digest())
        for folder in [*root.glob(".tmp-v*"), *(f for v, f in version_folders(root) if v > engine.version)]:
            try:
                engine.load_weights(folder)
            except WeightsError:
                refused += 1
                assert (engine.version, engine.digest()) == serving  # the previous version keeps serving
                continue
            loaded += 1
            assert (folder / "READY").exists() and verify_snapshot(folder)
            serving = (engine.version, engine.digest())
        assert verify_snapshot(latest_snapshot(root))["version"] == engine.version
        publish_snapshot(root, max(v for v, _ in version_folders(root)) + 1, model, tok, keep=3)  # the restart
        assert not list(root.glob(".tmp-v*")) and all((f / "READY").exists() for _, f in version_folders(root))
    kinds = {o.split("[")[0] for o in outcomes}
    assert len(outcomes) == KILLS and {"tmp", "unready"} <= kinds, outcomes
    assert len({o for o in outcomes if o.startswith("tmp")}) >= 3, outcomes  # several points inside the writes
    _report("5 crash during weight publish", kills=KILLS, fsyncs_per_publish=total, landed=outcomes,
            broken_refused=refused, good_loaded=loaded, broken_loaded=0)
