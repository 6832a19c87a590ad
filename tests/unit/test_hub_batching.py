"""The hub handles messages that arrive together as one batch (real hub, real ledger,
real sockets on loopback): every reply a peer receives, and every group the trainer
receives, stands for a ledger transition already committed (read back through a second
SQLite connection, which sees only committed rows), and a burst loses nothing."""

from __future__ import annotations

import asyncio
import queue
import sqlite3

import numpy as np

from learner.hub import Hub
from learner.ledger import Ledger
from protocol.config import parse_config
from protocol.transport import DealerEndpoint
from wire import next_of_kind

DIGEST = "d" * 64
N = 32  # groups in the burst


def _samples(n: int) -> list[dict]:
    return [{"token_ids": np.array([5, 6, 7], dtype=np.int32), "logprobs": np.array([-0.1, -0.2, -0.3], dtype=np.float32),
             "entropy": np.array([0.5, 0.25, 1.0], dtype=np.float16), "finish_reason": "stop", "text": f"t{i}"}
            for i in range(n)]


async def test_replies_and_handoffs_follow_the_commit(tmp_path):
    cfg = parse_config({"learner": {"screen_samples": 0, "max_in_flight": N, "prompts_per_step": 8},
                        "actor": {"group_size": 4}})
    rows = [{"id": f"p{i}", "prompt": f"{i}+1=", "meta": {"answer": str(i + 1)}} for i in range(2 * N)]
    inbox: queue.Queue = queue.Queue()
    hub = Hub(cfg, Ledger(tmp_path / "ledger.sqlite"), rows, rows[:1], inbox, run_id="t")
    committed = sqlite3.connect(tmp_path / "ledger.sqlite")  # sees committed transactions only

    def state(item_id: str) -> tuple | None:
        return committed.execute("SELECT state, peer FROM items WHERE item_id=?", (item_id,)).fetchone()

    await hub.publish({"version": 0, "folder": str(tmp_path), "manifest_sha256": "m", "digest": DIGEST}, 0.0)
    serving = asyncio.get_running_loop().create_task(hub.serve())
    actor, verifier = DealerEndpoint(hub.ep.address, "a0"), DealerEndpoint(hub.ep.address, "v0")
    try:
        await verifier.send("hello", role="verifier", name="v0", capabilities={})
        await verifier.send("work_request", slots=2 * N)
        await actor.send("hello", role="actor", name="a0", capabilities={})
        await actor.send("weights_loaded", version=0, digest=DIGEST, canary_logprob=0.0)
        await actor.send("work_request", slots=N)
        works = [await next_of_kind(actor, "work") for _ in range(N)]
        for w in works:  # each work's row was committed before the work left
            assert state(w["work_id"]) == ("dispatched", "a0")
        assert int(committed.execute("SELECT value FROM meta WHERE key='cursor'").fetchone()[0]) == N
        for w in works:  # a burst: the hub takes them in batches
            await actor.send("rollout_group", work_id=w["work_id"], prompt_id=w["prompts"][0]["id"], weights_version=0,
                             weights_digest=DIGEST, gen_seconds=0.1, samples=_samples(4))
        for _ in range(N):
            ack = await next_of_kind(actor, "ack")
            assert state(ack["ids"][0])[0] == "generated"
        jobs = [await next_of_kind(verifier, "verify_job") for _ in range(N)]
        for job in jobs:  # the verifier's lease was committed before its job left
            assert state(job["job_id"]) == ("generated", "v0")
        for i, job in enumerate(jobs):
            await verifier.send("verdicts", job_id=job["job_id"], rewards=[float(i % 2), 1.0, 0.0, 0.0],
                                details=[{}] * 4, verifier_version="x")
        loop = asyncio.get_running_loop()
        groups = [await loop.run_in_executor(None, lambda: inbox.get(timeout=10)) for _ in range(N)]
        assert sorted(g.item_id for g in groups) == sorted(w["work_id"] for w in works)
        assert all(state(g.item_id)[0] == "scored" for g in groups)
        counts = hub.ledger.counts()
        assert counts["dispatched"] == counts["in_flight"] == counts["state_scored"] == N  # nothing lost
        assert hub.ledger.totals() == {k: counts[k] for k in ("dispatched", "trained", "dropped", "in_flight")}
        assert hub.samples_generated == 4 * N and hub.ep.bad_messages == 0 and not hub.unwanted
    finally:
        serving.cancel()
        actor.close()
        verifier.close()
        hub.ep.close()
        committed.close()
