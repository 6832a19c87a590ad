"""Named fault policies: the ledger under another process's lock, snapshot versions across
restarts, and the disk-full publish policy (a real size-limited tmpfs where one can be
mounted; the integration fault test runs it in a whole run)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from learner import ledger as ledger_mod
from learner.ledger import Ledger, LedgerError
from learner.snapshots import SnapshotPublisher, resume_version, version_folders
from protocol.weights import latest_snapshot, publish_snapshot, verify_snapshot
from tiny import save_tiny, tiny_model, tiny_tokenizer

HOLD = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def _hold_lock(path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_ledger_waits_for_another_process_lock_and_counts_the_wait(tmp_path):
    led = Ledger(tmp_path / "ledger.sqlite")
    led.dispatch("a@0", "a", "actor-0", 60, 0)
    holder = _hold_lock(tmp_path / "ledger.sqlite", 1.5)
    t = time.monotonic()
    led.dispatch("b@1", "b", "actor-0", 60, 0)  # waits for the other process's commit
    waited = time.monotonic() - t
    holder.wait(10)
    assert 1.0 < waited < 10 and led.db.lock_waits == 1 and led.db.lock_wait_max_s >= 1.0
    assert led.counts()["dispatched"] == 2


def test_a_lock_held_past_the_bound_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_mod, "LOCK_WAIT_S", 0.5)
    led = Ledger(tmp_path / "ledger.sqlite")
    holder = _hold_lock(tmp_path / "ledger.sqlite", 3.0)
    try:
        with pytest.raises(LedgerError, match=r"ledger\.sqlite stayed locked by another process for more than 0s"):
            led.dispatch("a@0", "a", "actor-0", 60, 0)
    finally:
        holder.wait(10)
    sqlite3.connect(tmp_path / "ledger.sqlite").execute("SELECT 1")  # nothing left corrupted


def test_resumed_versions_only_go_up(tmp_path):
    root = tmp_path / "weights"
    assert resume_version(root, 0) == 0  # nothing on disk yet
    model, tok = tiny_model(), tiny_tokenizer()
    for v in (3, 4, 5):
        publish_snapshot(root, v, model, tok, keep=5)
    (root / "v000007").mkdir()  # a publish that died before READY
    assert resume_version(root, 5) == 8  # v6, v7 may have existed: never reuse a number
    assert resume_version(root, 9) == 9
    assert [v for v, _ in version_folders(root)] == [3, 4, 5, 7]


def test_prune_to_newest_keeps_the_snapshot_actors_serve(tmp_path):
    root = tmp_path / "weights"
    model, tok = tiny_model(), tiny_tokenizer()
    for v in (1, 2, 3):
        publish_snapshot(root, v, model, tok, keep=5)
    (root / "v000004").mkdir()  # unREADY
    assert SnapshotPublisher.prune_to_newest(root) == 3
    assert [v for v, _ in version_folders(root)] == [3] and verify_snapshot(latest_snapshot(root))


def _can_mount_tmpfs() -> bool:
    probe = ["unshare", "--mount", "--map-root-user", "--user", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


FULL_DISK = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from learner.snapshots import SnapshotPublisher
from protocol.weights import latest_snapshot, verify_snapshot
from tiny import tiny_model, tiny_tokenizer
model, tok = tiny_model(), tiny_tokenizer()
for root in sys.argv[1:3]:
    root, pub = Path(root), SnapshotPublisher(keep=3)
    ok = [pub.publish(root, v, model, tok) is not None for v in range(1, 5)]
    newest = latest_snapshot(root)
    print(" ".join(map(str, ok)), pub.failures, pub.consecutive, newest.name, verify_snapshot(newest)["version"])
"""


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a mount namespace (unshare) for a small tmpfs")
def test_a_full_disk_prunes_and_retries_then_keeps_serving_the_previous_snapshot(tmp_path):
    """Two real tmpfs folders: one holds two snapshots of the tiny model but not three (the
    policy frees space and the retry succeeds), one holds only one (the retry fails too and
    the previous snapshot keeps serving)."""
    folder = save_tiny(tmp_path / "m")
    one = sum(f.stat().st_size for f in folder.iterdir()) + 8192
    roomy, tight = tmp_path / "roomy", tmp_path / "tight"
    roomy.mkdir(), tight.mkdir()
    script = (f"mount -t tmpfs -o size={int(one * 2.5)} none {roomy} && "
              f"mount -t tmpfs -o size={int(one * 1.5)} none {tight} && "
              f"exec {sys.executable} -c '{FULL_DISK}' {roomy} {tight} {os.path.dirname(__file__)}")
    r = subprocess.run(["unshare", "--mount", "--map-root-user", "--user", "sh", "-c", script],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    roomy_line, tight_line = r.stdout.strip().splitlines()
    assert roomy_line == "True True True True 0 0 v000004 4"  # every publish written, some after pruning
    assert tight_line == "True False False False 3 3 v000001 1"  # v1 kept serving, never a broken one
    assert "[Errno 28] No space left on device" in r.stderr and "written after freeing space" in r.stderr
    assert "v000001 keeps serving (3 failures in a row)" in r.stderr
