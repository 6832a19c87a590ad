"""The ledger: every dispatched prompt group is a row in SQLite (WAL) (DESIGN §3).

What it does: a row moves `dispatched -> generated -> scored -> trained`, or to
`dropped` with a reason. Leases: a dispatched or generated row carries a deadline; rows
past it are returned by `expired()` so the hub re-dispatches them (same item id, attempt
+1). Transitions are idempotent: a late duplicate result for a row that has moved on is
reported as such and ignored. `counts()` gives the invariant
`dispatched == trained + dropped + in_flight` (in_flight = dispatched|generated|scored)
from the table; `totals()` gives the same four numbers from counters kept in memory by the
transitions (the hot path: no table scan).
A `meta` table keeps small run facts (the prompt cursor, the weights version).
Fault policy for a database locked by another process (a backup, an `sqlite3` shell): a
statement waits for the lock up to `LOCK_WAIT_S` (SQLite's busy handler), a wait longer
than `SLOW_WAIT_S` is logged and counted (`lock_waits`, `lock_wait_max_s`), and a lock
held past `LOCK_WAIT_S` raises `LedgerError` naming the file, which stops the run.

What it does not do: it stores no rollout payloads (a restart re-dispatches in-flight
rows instead), and it is used from one thread only (the hub's event loop).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("scca.ledger")

LOCK_WAIT_S = 60.0  # a statement waits this long for another process's lock, then fails
SLOW_WAIT_S = 1.0  # a statement slower than this is logged as a lock wait

IN_FLIGHT = ("dispatched", "generated", "scored")
STATES = IN_FLIGHT + ("trained", "dropped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    prompt_id TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    peer TEXT,
    deadline REAL,
    version INTEGER,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LedgerError(RuntimeError):
    """A transition the ledger does not allow (e.g. an unknown item)."""


class _Connection:
    """sqlite3 connection whose `execute` measures lock waits and names a lock held too long."""

    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=LOCK_WAIT_S)  # autocommit
        self.lock_waits = 0
        self.lock_wait_max_s = 0.0

    def execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        t = time.monotonic()
        try:
            return self.conn.execute(sql, params)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            raise LedgerError(f"{self.path} stayed locked by another process for more than {LOCK_WAIT_S:.0f}s "
                              f"({exc}): close whatever holds it (a backup, an sqlite3 shell) and resume") from None
        finally:
            waited = time.monotonic() - t
            if waited > SLOW_WAIT_S:
                self.lock_waits += 1
                self.lock_wait_max_s = max(self.lock_wait_max_s, waited)
                log.warning("ledger statement waited %.1fs for %s (locked by another process?)", waited, self.path)

    def executescript(self, sql: str) -> None:
        self.conn.executescript(sql)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = _Connection(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._in_flight = self._count_in_flight()  # kept in step by the transitions below (hot path)
        c = self.counts()
        self._trained, self._dropped = c["trained"], c["dropped"]  # likewise

    # --- transitions -------------------------------------------------------------
    def dispatch(self, item_id: str, prompt_id: str, peer: str, lease_s: float, version: int,
                 meta: dict[str, str] | None = None) -> None:
        """A new row, and `meta` updates (e.g. the prompt cursor) in the same transaction (the
        caller's, inside `batch()`: a savepoint there would add nothing, its commit is the batch's)."""
        now = time.time()
        own = not self.db.in_transaction
        if own:
            self.db.execute("SAVEPOINT dispatch")
        self.db.execute(
            "INSERT INTO items(item_id, prompt_id, state, peer, deadline, version, updated) "
            "VALUES (?, ?, 'dispatched', ?, ?, ?, ?)",
            (item_id, prompt_id, peer, now + lease_s, version, now),
        )
        for key, value in (meta or {}).items():
            self.set_meta(key, value)
        if own:
            self.db.execute("RELEASE dispatch")
        self._in_flight += 1

    def redispatch(self, item_id: str, peer: str, lease_s: float, version: int) -> None:
        """Hand an in-flight row to a (new) peer under a fresh lease."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE items SET state='dispatched', peer=?, deadline=?, version=?, attempts=attempts+1, updated=? "
            "WHERE item_id=? AND state IN ('dispatched','generated','scored')",
            (peer, now + lease_s, version, now, item_id),
        )
        if cur.rowcount != 1:
            raise LedgerError(f"cannot re-dispatch {item_id!r}: not in flight")

    def _move(self, item_id: str, src: tuple[str, ...], dst: str, *, reason=None, peer=None, deadline=None) -> bool:
        marks = ",".join("?" * len(src))
        cur = self.db.execute(
            f"UPDATE items SET state=?, reason=?, peer=COALESCE(?, peer), deadline=?, updated=? "
            f"WHERE item_id=? AND state IN ({marks})",
            (dst, reason, peer, deadline, time.time(), item_id, *src),
        )
        return cur.rowcount == 1

    def generated(self, item_id: str, lease_s: float) -> bool:
        """The rollout arrived (first copy). False = duplicate or unknown: ignore it."""
        return self._move(item_id, ("dispatched",), "generated", peer="", deadline=time.time() + lease_s)

    def assign_verifier(self, item_id: str, verifier: str, lease_s: float) -> bool:
        return self._move(item_id, ("generated",), "generated", peer=verifier, deadline=time.time() + lease_s)

    def park(self, item_id: str) -> bool:
        """A dispatched row whose actor is gone waits, lease-free, for the next actor."""
        return self._move(item_id, ("dispatched",), "dispatched", peer="", deadline=None)

    def rewind(self, after_version: int) -> int:
        """Rows trained into versions after a checkpoint were lost with it: train them again."""
        cur = self.db.execute(
            "UPDATE items SET state='dispatched', peer='', deadline=NULL, updated=? WHERE state='trained' AND version>?",
            (time.time(), after_version),
        )
        self._in_flight += cur.rowcount
        self._trained -= cur.rowcount
        return cur.rowcount

    def resume(self) -> list[str]:
        """After a restart nothing is really in flight: park every in-flight row for re-dispatch."""
        self.db.execute("UPDATE items SET state='dispatched', peer='', deadline=NULL WHERE state IN ('dispatched','generated','scored')")
        return [r[0] for r in self.db.execute("SELECT item_id FROM items WHERE state='dispatched' ORDER BY updated")]

    def scored(self, item_id: str) -> bool:
        return self._move(item_id, ("generated",), "scored")

    def trained(self, item_ids: list[str], version: int) -> None:
        """Rows consumed by the optimiser step that produced weights `version`."""
        self.db.execute("SAVEPOINT trained")
        for item_id in item_ids:
            cur = self.db.execute(
                "UPDATE items SET state='trained', version=?, deadline=NULL, updated=? WHERE item_id=? AND state='scored'",
                (version, time.time(), item_id),
            )
            if cur.rowcount != 1:
                self.db.execute("ROLLBACK TO trained")
                self.db.execute("RELEASE trained")
                raise LedgerError(f"cannot mark {item_id!r} trained: not scored")
        self.db.execute("RELEASE trained")
        self._in_flight -= len(item_ids)
        self._trained += len(item_ids)

    def drop(self, item_id: str, reason: str) -> bool:
        moved = self._move(item_id, IN_FLIGHT, "dropped", reason=reason)
        self._in_flight -= moved
        self._dropped += moved
        return moved

    @contextlib.contextmanager
    def batch(self):
        """The transitions made inside become one transaction (one commit instead of one per
        statement); nested use joins the outer one. What was done is committed even when the
        block raises (as statement-by-statement autocommit would have)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            if self.db.in_transaction:
                self.db.execute("COMMIT")

    # --- queries -----------------------------------------------------------------
    def state(self, item_id: str) -> str | None:
        row = self.db.execute("SELECT state FROM items WHERE item_id=?", (item_id,)).fetchone()
        return row[0] if row else None

    def expired(self, now: float | None = None) -> list[tuple[str, str, str]]:
        """(item_id, prompt_id, state) of dispatched/generated rows whose lease ran out."""
        now = time.time() if now is None else now
        return self.db.execute(
            "SELECT item_id, prompt_id, state FROM items WHERE state IN ('dispatched','generated') AND deadline < ?",
            (now,),
        ).fetchall()

    def held_by(self, peer: str) -> list[tuple[str, str, str]]:
        return self.db.execute(
            "SELECT item_id, prompt_id, state FROM items WHERE state IN ('dispatched','generated') AND peer=?",
            (peer,),
        ).fetchall()

    def in_flight(self) -> list[tuple[str, str, str]]:
        return self.db.execute(
            "SELECT item_id, prompt_id, state FROM items WHERE state IN ('dispatched','generated','scored')"
        ).fetchall()

    def in_flight_count(self) -> int:
        """Rows dispatched but not yet trained or dropped (kept in memory; hot path)."""
        return self._in_flight

    def _count_in_flight(self) -> int:
        return int(self.db.execute(
            "SELECT COUNT(*) FROM items WHERE state IN ('dispatched','generated','scored')").fetchone()[0])

    def totals(self) -> dict[str, int]:
        """dispatched, trained, dropped and in_flight as `counts()` gives them, from memory."""
        t, d, f = self._trained, self._dropped, self._in_flight
        return {"dispatched": t + d + f, "trained": t, "dropped": d, "in_flight": f}

    def counts(self) -> dict[str, int]:
        by_state = dict(self.db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
        c = {s: int(by_state.get(s, 0)) for s in STATES}
        in_flight = sum(c[s] for s in IN_FLIGHT)
        total = int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return {"dispatched": total, "trained": c["trained"], "dropped": c["dropped"], "in_flight": in_flight, **{f"state_{s}": c[s] for s in IN_FLIGHT}}

    def dropped_reasons(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, COUNT(*) FROM items WHERE state='dropped' GROUP BY reason").fetchall())

    # --- meta --------------------------------------------------------------------
    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def close(self) -> None:
        self.db.close()
