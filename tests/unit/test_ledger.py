"""The SQLite ledger: transitions, leases, idempotence and the balance invariant."""

import sqlite3

import pytest

from learner.ledger import Ledger, LedgerError


def balanced(ledger: Ledger) -> bool:
    c = ledger.counts()
    return c["dispatched"] == c["trained"] + c["dropped"] + c["in_flight"]


def test_lifecycle_and_invariant(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    for i in range(5):
        led.dispatch(f"p{i}@{i}", f"p{i}", "actor-0", 60, 0)
    assert balanced(led) and led.counts()["in_flight"] == 5
    assert led.generated("p0@0", 30) and led.scored("p0@0")
    led.trained(["p0@0"], version=1)
    assert led.drop("p1@1", "stale")
    c = led.counts()
    assert (c["dispatched"], c["trained"], c["dropped"], c["in_flight"]) == (5, 1, 1, 3)
    assert balanced(led) and led.dropped_reasons() == {"stale": 1}


def test_duplicates_are_ignored(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.dispatch("a@0", "a", "actor-0", 60, 0)
    assert led.generated("a@0", 30)
    assert not led.generated("a@0", 30)  # second copy of the same rollout
    assert not led.generated("nope@0", 30)  # unknown id
    assert led.scored("a@0") and not led.scored("a@0")
    with pytest.raises(LedgerError, match="not scored"):
        led.trained(["b@9"], version=1)


def test_trained_is_all_or_nothing(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.dispatch("a@0", "a", "x", 60, 0)
    led.generated("a@0", 30)
    led.scored("a@0")
    with pytest.raises(LedgerError):
        led.trained(["a@0", "missing@1"], version=1)
    assert led.state("a@0") == "scored"


def test_expired_leases_and_parking(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.dispatch("a@0", "a", "actor-0", -1, 0)  # already past its lease
    led.dispatch("b@1", "b", "actor-0", 3600, 0)
    assert [r[0] for r in led.expired()] == ["a@0"]
    assert led.park("a@0") and led.expired() == []
    led.redispatch("a@0", "actor-1", 60, 1)
    row = led.db.execute("SELECT attempts, peer FROM items WHERE item_id='a@0'").fetchone()
    assert row == (2, "actor-1")
    assert [r[0] for r in led.held_by("actor-0")] == ["b@1"]


def test_resume_and_rewind(tmp_path):
    path = tmp_path / "l.sqlite"
    led = Ledger(path)
    for i, state in enumerate(["dispatched", "generated", "scored", "trained", "trained"]):
        led.dispatch(f"x{i}", "x", "a", 60, 0)
        if state != "dispatched":
            led.generated(f"x{i}", 30)
        if state in ("scored", "trained"):
            led.scored(f"x{i}")
        if state == "trained":
            led.trained([f"x{i}"], version=i)  # versions 3 and 4
    led.close()
    led = Ledger(path)  # a restarted learner
    assert led.rewind(after_version=3) == 1  # x4 was trained after the checkpoint
    parked = led.resume()
    assert sorted(parked) == ["x0", "x1", "x2", "x4"]
    assert balanced(led) and led.counts()["trained"] == 1 and led.expired() == []


def test_wal_and_meta(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.set_meta("cursor", "7")
    led.set_meta("cursor", "8")
    assert led.get_meta("cursor") == "8" and led.get_meta("none", "d") == "d"
    mode = sqlite3.connect(tmp_path / "l.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_in_flight_count_matches_counts(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    for i in range(4):
        led.dispatch(f"x{i}", "x", "a", 60, 0)
    led.drop("x0", "stale")
    assert led.in_flight_count() == led.counts()["in_flight"] == 3


def test_in_flight_count_kept_in_memory_matches_the_table(tmp_path):
    """The hot-path counters (in_flight_count, totals) agree with COUNTs over the table after
    every kind of transition."""
    import random

    from learner.ledger import Ledger

    led = Ledger(tmp_path / "l.sqlite")
    rng = random.Random(0)
    for i in range(60):
        led.dispatch(f"p{i}@{i}", f"p{i}", "a", 60.0, 0, meta={"cursor": str(i + 1)})
        item = f"p{i}@{i}"
        roll = rng.random()
        if roll < 0.3:
            led.drop(item, "no_signal")
        elif roll < 0.7:
            led.generated(item, 60.0)
            led.scored(item)
            if roll < 0.5:
                led.trained([item], version=i % 5)
        assert led.in_flight_count() == led._count_in_flight()
        assert led.totals() == _buckets(led)
    led.rewind(after_version=2)
    assert led.in_flight_count() == led._count_in_flight() and led.get_meta("cursor") == "60"
    assert led.totals() == _buckets(led) and led.totals()["trained"] > 0
    led.drop("p0@0", "again")  # already dropped: no change
    assert led.in_flight_count() == led._count_in_flight() and led.totals() == _buckets(led)
    totals = led.totals()
    led.close()
    again = Ledger(tmp_path / "l.sqlite")
    assert again.in_flight_count() == totals["in_flight"] and again.totals() == totals


def _buckets(led) -> dict[str, int]:
    c = led.counts()
    return {k: c[k] for k in ("dispatched", "trained", "dropped", "in_flight")}
