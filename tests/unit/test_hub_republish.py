"""An actor that refuses the newest snapshot (checksum mismatch on disk) makes the hub ask the
trainer to write it again, at most once per REPUBLISH_MIN_S; a refusal of an older one does not
(real hub, real ledger, real sockets on loopback)."""

from __future__ import annotations

import asyncio
import queue

from learner import hub as H
from learner.hub import Hub
from learner.ledger import Ledger
from protocol.config import parse_config
from protocol.transport import DealerEndpoint

DIGEST = "d" * 64


async def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_refused_newest_snapshot_is_published_again_at_most_once_per_interval(tmp_path):
    cfg = parse_config({})
    rows = [{"id": "p0", "prompt": "1+1=", "meta": {"answer": "2"}}]
    hub = Hub(cfg, Ledger(tmp_path / "ledger.sqlite"), rows, rows, queue.Queue(), run_id="t")
    await hub.publish({"version": 4, "folder": str(tmp_path / "weights" / "v000004"), "manifest_sha256": "m",
                       "digest": DIGEST}, 0.0)
    serving = asyncio.get_running_loop().create_task(hub.serve())
    actor = DealerEndpoint(hub.ep.address, "a0")
    try:
        await actor.send("hello", role="actor", name="a0", capabilities={})
        await actor.send("error", code="bad_weights", message="corrupted: model.safetensors sha256 mismatch in /x/v000003")
        assert await _wait(lambda: hub.weights_refused == 1) and not hub.republish.is_set()  # an older one: nothing
        await actor.send("error", code="bad_weights", message=f"corrupted: ... in {tmp_path}/weights/v000004")
        assert await _wait(hub.republish.is_set)
        hub.republish.clear()
        await actor.send("error", code="bad_weights", message=f"corrupted: ... in {tmp_path}/weights/v000004")
        assert await _wait(lambda: hub.weights_refused == 3) and not hub.republish.is_set()  # within the interval
        hub._republished_at -= H.REPUBLISH_MIN_S
        await actor.send("error", code="bad_weights", message=f"corrupted: ... in {tmp_path}/weights/v000004")
        assert await _wait(hub.republish.is_set)
    finally:
        serving.cancel()
        actor.close()
        hub.ep.close()
