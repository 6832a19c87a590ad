"""Helpers for the fault-injection tests: finding the processes of a run, waiting for a
publish in progress, and the accounting every fault test asserts.

Test helper only (not part of the scca package). It reads what a run leaves on disk —
the ledger (SQLite, read-only), metrics.jsonl, weights_sync.jsonl, summary.json, logs —
and never talks to the processes except by signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import time
from pathlib import Path

from conftest import read_jsonl

LEGIT_DROPS = {"stale", "no_signal"}  # the only reasons a group may leave the run untrained
LEAN = {"task": {"train_size": 2000, "heldout_size": 16},  # small budgets: few steps, small prompt sets
        "learner": {"prompts_per_step": 4, "eval_every": 0, "checkpoint_every": 2},
        "actor": {"group_size": 4}}


def merge(*parts: dict) -> dict:
    out: dict = {}
    for part in parts:
        for section, values in part.items():
            out.setdefault(section, {}).update(values)
    return out


def prepared_run(base: Path, bootstrap_dir: Path, overrides: dict) -> tuple[Path, str]:
    """A run folder `base/run` (prompt files, config.json from deploy/default.toml + LEAN +
    `overrides`) on a fixed loopback port, as `scca run` prepares it, for services started
    one by one; returns (run folder, address)."""
    from deploy.cli import DEFAULT_CONFIG
    from deploy.launcher import prepare_run
    from protocol.config import load_config

    run_dir = Path(base) / "run"
    address = f"tcp://127.0.0.1:{free_port()}"
    data = merge({"model": {"bootstrap_dir": str(bootstrap_dir)}}, LEAN, overrides, {"hub": {"bind": address}})
    prepare_run(load_config(DEFAULT_CONFIG, data), run_dir)
    (run_dir / "logs").mkdir()
    return run_dir, address


# --- processes --------------------------------------------------------------------
def _cmdline(pid: str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def pid_of(marker: str, name: str) -> int:
    """pid of the scca service whose command line holds `marker` and the argument `name`."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            cmd = _cmdline(p.name)
            if marker.encode() in b" ".join(cmd) and name.encode() in cmd and b"deploy.cli" in cmd:
                return int(p.name)
    raise AssertionError(f"no process {name} of {marker}")


def children_of(pid: int, needle: bytes = b"") -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and needle in b" ".join(_cmdline(p.name)):
            out.append(int(p.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def metrics_port(run_dir: Path, name: str) -> int:
    """/metrics port of a service, from the last `metrics on :PORT` of its log (a resumed
    run appends a new session to the same log)."""
    return int(re.findall(r"metrics on :(\d+)", (run_dir / "logs" / f"{name}.log").read_text(errors="replace"))[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_when_publishing(run_dir: Path, pid: int, timeout: float, sig: int = signal.SIGKILL) -> dict:
    """Signal `pid` the moment a snapshot is being written (a `.tmp-v*` folder appears).
    Returns what the kill left: the temp folders and version folders without READY."""
    weights = run_dir / "weights"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tmp = [p for p in weights.iterdir() if p.name.startswith(".tmp-v")]
        except FileNotFoundError:
            tmp = []
        if tmp:
            os.kill(pid, sig)
            t = time.time()
            time.sleep(0.3)
            return {"time": t, "tmp": sorted(p.name for p in weights.iterdir() if p.name.startswith(".tmp-v")),
                    "unready": sorted(p.name for p in weights.glob("v*") if not (p / "READY").exists()),
                    "ready": sorted(p.name for p in weights.glob("v*") if (p / "READY").exists())}
        time.sleep(0.002)
    raise AssertionError(f"no publish started within {timeout}s")


# --- what the run left ------------------------------------------------------------
def steps(run_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def ledger(run_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    db = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def log_times(path: Path, pattern: str) -> list[float]:
    """Unix times of the log lines matching `pattern` (lines start `YYYY-mm-dd HH:MM:SS,mmm`)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if re.search(pattern, line):
            stamp = line[:23]
            out.append(time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + int(stamp[20:23]) / 1000)
    return out


def check_accounting(run_dir: Path, stop_reason: str = "completed") -> dict:
    """What every fault test asserts, over the whole run (every session of it):
    * the ledger balances: dispatched = trained + dropped + in_flight;
    * no rollout lost: every dropped group was dropped for staleness or for no signal;
    * no rollout trained twice: the groups trained into each version are exactly the
      groups of the one surviving step that made that version (a step of a killed
      session after its last checkpoint did not survive; its groups were trained again);
    * versions only go up: in metrics.jsonl, and in what every peer loaded, in time order;
    * the run ended with `stop_reason`. Returns the numbers for the report."""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == stop_reason, summary
    led = summary["ledger"]
    assert led["dispatched"] == led["trained"] + led["dropped"] + led["in_flight"], led
    reasons = dict(ledger(run_dir, "SELECT reason, COUNT(*) FROM items WHERE state='dropped' GROUP BY reason"))
    lost = sum(n for r, n in reasons.items() if r not in LEGIT_DROPS)
    assert lost == 0, reasons
    rows = steps(run_dir)
    versions = [r["version"] for r in rows]
    assert versions == sorted(set(versions)), f"versions not strictly increasing: {versions}"
    surviving = {r["step"]: r for r in rows}  # the last row of each step number
    by_version = dict(ledger(run_dir, "SELECT version, COUNT(*) FROM items WHERE state='trained' GROUP BY version"))
    expected = {r["version"]: r["groups"] for r in surviving.values()}
    assert by_version == expected, f"trained groups per version {by_version} != surviving steps {expected}"
    assert sorted(surviving) == list(range(1, summary["steps"] + 1))
    for peer, loaded in peer_versions(run_dir).items():
        assert loaded == sorted(loaded), f"{peer} loaded versions out of order: {loaded}"
    return {"dispatched": led["dispatched"], "trained": led["trained"], "dropped": reasons, "lost": lost,
            "trained_twice": 0, "steps": summary["steps"], "replayed_steps": len(rows) - len(surviving)}


def peer_versions(run_dir: Path) -> dict[str, list[int]]:
    """Versions each peer loaded (accepted by the learner), in the order they were loaded."""
    out: dict[str, list[int]] = {}
    for e in sorted(read_jsonl(run_dir / "weights_sync.jsonl"), key=lambda e: e["time"]):
        if e["ok"]:
            out.setdefault(e["peer"], []).append(e["version"])
    return out
