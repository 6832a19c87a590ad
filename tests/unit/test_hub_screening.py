"""SPEED screening through the real hub (real ledger, real sockets on loopback): a screen
without signal is dropped after k samples, a mixed one gets its continuation under its own
work id and reaches the trainer as one group of G, and a late copy of the screen is ignored."""

from __future__ import annotations

import asyncio
import queue

import numpy as np

from learner.hub import Hub
from learner.ledger import Ledger
from protocol.config import parse_config
from protocol.transport import DealerEndpoint
from wire import next_of_kind

DIGEST = "d" * 64


def _samples(n: int) -> list[dict]:
    return [{"token_ids": np.array([5, 6], dtype=np.int32), "logprobs": np.array([-0.1, -0.2], dtype=np.float32),
             "finish_reason": "stop", "text": f"t{i}"} for i in range(n)]


async def test_screen_drop_continue_merge_and_duplicate(tmp_path):
    cfg = parse_config({"learner": {"screen_samples": 3, "max_in_flight": 2}, "actor": {"group_size": 8}})
    rows = [{"id": f"p{i}", "prompt": f"{i}+1=", "meta": {"answer": str(i + 1)}} for i in range(10)]
    inbox: queue.Queue = queue.Queue()
    hub = Hub(cfg, Ledger(tmp_path / "ledger.sqlite"), rows, rows[:1], inbox, run_id="t")
    await hub.publish({"version": 0, "folder": str(tmp_path), "manifest_sha256": "m", "digest": DIGEST}, 0.0)
    serving = asyncio.get_running_loop().create_task(hub.serve())
    actor, verifier = DealerEndpoint(hub.ep.address, "a0"), DealerEndpoint(hub.ep.address, "v0")
    try:
        await verifier.send("hello", role="verifier", name="v0", capabilities={})
        await verifier.send("work_request", slots=8)
        await actor.send("hello", role="actor", name="a0", capabilities={})
        await actor.send("weights_loaded", version=0, digest=DIGEST, canary_logprob=0.0)
        await actor.send("work_request", slots=2)
        works = [await next_of_kind(actor, "work") for _ in range(2)]
        assert [w["group_size"] for w in works] == [3, 3] and not any(w["urgent"] for w in works)
        for w, rewards in zip(works, ([0.0, 0.0, 0.0], [0.0, 1.0, 0.0])):
            await actor.send("rollout_group", work_id=w["work_id"], prompt_id=w["prompts"][0]["id"], weights_version=0,
                             weights_digest=DIGEST, gen_seconds=0.1, samples=_samples(3))
            job = await next_of_kind(verifier, "verify_job")
            await verifier.send("verdicts", job_id=job["job_id"], rewards=rewards, details=[{}] * 3,
                                verifier_version="x")
        await actor.send("work_request", slots=2)
        cont = await next_of_kind(actor, "work")  # the mixed screen continues first; the dropped one freed its slot
        assert cont["work_id"] == works[1]["work_id"] + "+" and cont["group_size"] == 5 and cont["urgent"]
        late = dict(work_id=works[1]["work_id"], prompt_id=works[1]["prompts"][0]["id"], weights_version=0,
                    weights_digest=DIGEST, gen_seconds=0.1, samples=_samples(3))
        await actor.send("rollout_group", **late)  # a late copy of the screen: a duplicate now
        await actor.send("rollout_group", work_id=cont["work_id"], prompt_id=cont["prompts"][0]["id"],
                         weights_version=0, weights_digest=DIGEST, gen_seconds=0.1, samples=_samples(5))
        job = await next_of_kind(verifier, "verify_job")
        assert job["job_id"] == works[1]["work_id"] and len(job["completions"]) == 5
        await verifier.send("verdicts", job_id=job["job_id"], rewards=[1.0, 0.0, 0.0, 1.0, 0.0], details=[{}] * 5,
                            verifier_version="x")
        group = await asyncio.get_running_loop().run_in_executor(None, lambda: inbox.get(timeout=10))
        assert group.item_id == works[1]["work_id"] and len(group.samples) == 8
        assert group.rewards == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        assert hub.ledger.dropped_reasons() == {"screened": 1} and hub.samples_generated == 11
        assert hub.ledger.state(group.item_id) == "scored" and inbox.empty()
    finally:
        serving.cancel()
        actor.close()
        verifier.close()
        hub.ep.close()
