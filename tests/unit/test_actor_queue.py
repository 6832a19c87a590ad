"""The actor's queue: new weights jump ahead of queued work (replacing older weights still
queued), urgent work (a screened prompt's continuation) goes right behind them."""

from __future__ import annotations

from actors.service import Actor
from protocol.config import RunConfig


def test_weights_first_then_urgent_work_then_the_rest():
    actor = Actor(RunConfig(), "tcp://127.0.0.1:9", "actor-q")
    try:
        w = lambda i, urgent=False: {"kind": "work", "work_id": f"w{i}", "urgent": urgent}  # noqa: E731
        v = lambda n: {"kind": "weights_published", "version": n}  # noqa: E731
        for m in (w(1), w(2), v(3), w(4), w(5, urgent=True), v(4), w(6), w(7, urgent=True)):
            actor.enqueue(m)
        order = [m.get("work_id") or f"v{m['version']}" for m in actor.queue]
        assert order == ["v4", "w7", "w5", "w1", "w2", "w4", "w6"]
        assert actor.wakeup.is_set()
    finally:
        actor.ep.close()
        actor.pool.shutdown()
