"""Hub throughput: rollout groups per second through the real hub against raw pyzmq moving the same bytes.

Arms, each measured side by side in this one invocation (alternating, `--repeats` times):
  * `hub`: the learner's real `Hub` (real SQLite ledger in a temp folder, real codec and
    validation, real dispatch/lease/verify bookkeeping) in this process; a peer process
    plays one actor and one verifier over loopback TCP: the actor answers every `work`
    with a pre-built 8-sample `rollout_group` (30 tokens per sample: token ids, behaviour
    log-probs, entropy, text), the verifier answers every `verify_job` with `verdicts`
    at once. A trainer thread takes scored groups from the hub's queue and marks them
    trained 16 at a time through the event loop, as the real trainer does.
  * `raw`: the same two processes and the same messages byte for byte (work, rollout,
    ack, verify job, verdicts per group) through plain asyncio pyzmq ROUTER/DEALER
    sockets, with no decoding, validation or ledger. It is the cost of moving the bytes
    only: it never unpacks a rollout (it tells kinds apart by length and a substring) and
    runs no trainer thread, so its rate is set by the peer process (which packs every
    rollout: its 24 arrays) far more than by its own loop; it is a fair upper bound for
    the transport, not a hub that does less.
It prints groups/s and samples/s of each arm, the ratio hub/raw, the spread over repeats,
the CPU time the learner-side process spent per group (all its threads: event loop, trainer
thread, ZeroMQ I/O thread; the peer process not included), the share of the hub arm's wall
time its event-loop thread spent on a CPU and waiting for one (Linux schedstat: runnable,
not running), and the load average. On a loaded machine the CPU per group is the steadier
number: groups/s = the share of a core the process got / CPU per group. Results:
`bench/results/transport.json`.

    .venv/bin/python bench/transport.py [--groups 4000] [--repeats 3]

Does NOT: generate, score or train anything (peers answer with canned messages), or use
any network address other than 127.0.0.1.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402
import zmq.asyncio  # noqa: E402

from protocol import messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NS = 1e9  # schedstat counts nanoseconds
GROUP = 8  # samples per group
TOKENS = 30  # completion tokens per sample
STEP_GROUPS = 16  # groups the trainer thread marks trained at once
DIGEST = "d" * 64
SLOTS = 64  # actor credit (work messages outstanding)
BATCH = 8  # groups the actor answers per generate call (8 x 8 samples = its 64-row batch)
IN_FLIGHT = 1024  # the hub's dispatch window: large, so the staleness policy does not bound the transport


def rollout(work_id: str, prompt_id: str, rng: np.random.Generator) -> dict:
    samples = [{"token_ids": rng.integers(4, 80, TOKENS).astype(np.int32),
                "logprobs": -rng.random(TOKENS).astype(np.float32),
                "entropy": rng.random(TOKENS).astype(np.float16), "hidden": None,
                "finish_reason": "stop", "text": "12+34=46;46+56=102;#102" + "0" * (TOKENS - 23)}
               for _ in range(GROUP)]
    return messages.make("rollout_group", "actor-0", 0, work_id=work_id, prompt_id=prompt_id,
                         weights_version=0, weights_digest=DIGEST, gen_seconds=0.1, samples=samples)


def verdicts(job_id: str) -> dict:
    rewards = [float(i % 2) for i in range(GROUP)]  # mixed: every group has signal
    return messages.make("verdicts", "verifier-0", 0, job_id=job_id, rewards=rewards,
                         details=[{"first_wrong": 3}] * GROUP, verifier_version="arith-1/none")


# ----------------------------------------------------------------------------- peer process


async def peer(address: str) -> None:
    """One actor + one verifier DEALER talking to `address` until told to stop (kind `error`).
    Replies are templates encoded once and re-packed with the new ids (no validation here: the
    peer should cost as little as possible, in both arms alike)."""
    ctx = zmq.asyncio.Context.instance()
    template = rollout("w", "p", np.random.default_rng(0))
    judged = verdicts("j")
    actor, verifier = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock, name in ((actor, b"actor-0"), (verifier, b"verifier-0")):
        sock.setsockopt(zmq.IDENTITY, name)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
    pack = lambda kind, **f: msgpack.packb(messages.make(kind, "peer", 0, **f), default=messages_default)  # noqa: E731
    more = pack("work_request", slots=BATCH)
    await actor.send(pack("hello", role="actor", name="actor-0", capabilities={}))
    await verifier.send(pack("hello", role="verifier", name="verifier-0", capabilities={}))
    await verifier.send(pack("work_request", slots=SLOTS))
    await actor.send(pack("weights_loaded", version=0, digest=DIGEST, canary_logprob=0.0))
    await actor.send(pack("work_request", slots=SLOTS))

    async def serve_actor():
        """Like the real actor: work is answered a batch (BATCH groups = its 64-row generate
        call) at a time, then one work_request gives the credit back."""
        batch = []
        while True:
            msg = msgpack.unpackb(await actor.recv(), raw=False)
            if msg["kind"] == "work":
                batch.append(msg)
            elif msg["kind"] == "error":
                return
            if len(batch) == BATCH:
                for w in batch:
                    out = dict(template, work_id=w["work_id"], prompt_id=w["prompts"][0]["id"])
                    await actor.send(msgpack.packb(out, default=messages_default))
                await actor.send(more)
                batch.clear()

    async def serve_verifier():
        while True:
            msg = msgpack.unpackb(await verifier.recv(), raw=False)
            if msg["kind"] == "verify_job":
                await verifier.send(msgpack.packb(dict(judged, job_id=msg["job_id"])))
            elif msg["kind"] == "error":
                return

    done, pending = await asyncio.wait([asyncio.ensure_future(serve_actor()), asyncio.ensure_future(serve_verifier())],
                                       return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()


def messages_default(obj):
    from protocol.codec import _default
    return _default(obj)


# ----------------------------------------------------------------------------- hub arm


def schedstat(tid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of thread `tid` (Linux)."""
    on_cpu, waiting = Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[:2]
    return int(on_cpu) / NS, int(waiting) / NS


async def hub_arm(n_groups: int) -> tuple[float, float]:
    """Scored groups per second reaching the trainer through the real hub, this process's
    CPU seconds per group over the same interval, and the event-loop thread's (on-CPU,
    waiting-for-a-CPU) shares of that interval."""
    from learner.hub import Hub
    from learner.ledger import Ledger
    from protocol.config import parse_config

    cfg = parse_config({"learner": {"screen_samples": 0, "prompts_per_step": STEP_GROUPS, "max_in_flight": IN_FLIGHT},
                        "hub": {"bind": "tcp://127.0.0.1:0"}})
    rows = [{"id": f"p{i}", "prompt": "12+34+56=", "meta": {"answer": "102"}} for i in range(n_groups + 1000)]
    with tempfile.TemporaryDirectory() as d:
        inbox: queue.Queue = queue.Queue()
        hub = Hub(cfg, Ledger(Path(d) / "ledger.sqlite"), rows, rows[:1], inbox, run_id="bench")
        await hub.publish({"version": 0, "folder": d, "manifest_sha256": "m" * 64, "digest": DIGEST}, 0.0)
        loop = asyncio.get_running_loop()
        gc.freeze()  # as learner/service.py does before serving (unfrozen below: the raw arm runs in this process too)
        serving = loop.create_task(hub.serve())
        proc = subprocess.Popen([sys.executable, __file__, "--peer", hub.ep.address], cwd=ROOT)
        first, done = {}, asyncio.Event()
        loop_tid = threading.get_native_id()

        def trainer():
            got = 0
            while got < n_groups:
                batch = [inbox.get() for _ in range(min(STEP_GROUPS, n_groups - got))]
                first.setdefault("t", time.perf_counter())
                first.setdefault("cpu", time.process_time())
                first.setdefault("sched", schedstat(loop_tid))
                got += len(batch)
                ids = [g.item_id for g in batch]
                asyncio.run_coroutine_threadsafe(mark(ids), loop).result()
            loop.call_soon_threadsafe(done.set)

        async def mark(ids):
            hub.mark_trained(ids, [], 1)
            await hub.pump()

        threading.Thread(target=trainer, daemon=True).start()
        await done.wait()
        wall = time.perf_counter() - first["t"]  # timed from the first batch
        rate = (n_groups - STEP_GROUPS) / wall
        cpu = (time.process_time() - first["cpu"]) / (n_groups - STEP_GROUPS)
        sched = [(b - a) / wall for a, b in zip(first["sched"], schedstat(loop_tid))]
        for peer_ in list(hub.peers.values()):
            await hub.ep.send(peer_.identity, "error", code="bench_done", message="stop")
        proc.wait(30)
        serving.cancel()
        hub.ep.close()
        hub.ledger.close()
        gc.unfreeze()
    return rate, cpu, sched


# ----------------------------------------------------------------------------- raw arm


async def raw_arm(n_groups: int) -> tuple[float, float]:
    """Groups per second with the same messages moved by bare asyncio pyzmq (no decoding, no
    ledger), and this process's CPU seconds per group."""
    ctx = zmq.asyncio.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:0")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    rng = np.random.default_rng(0)
    enc = messages.encode
    work = enc(messages.make("work", "learner", 0, work_id="p1@1", policy_version=0,
                             prompts=[{"id": "p1", "text": "12+34+56="}], group_size=GROUP,
                             sampling={"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 40}, eval=False))
    ack = enc(messages.make("ack", "learner", 0, ids=["p1@1"]))
    job = enc(messages.make("verify_job", "learner", 0, job_id="p1@1", task="arith", prompt="12+34+56=",
                            meta={"answer": "102"}, completions=[s["text"] for s in rollout("w", "p", rng)["samples"]]))
    stop = enc(messages.make("error", "learner", 0, code="bench_done", message="stop"))
    proc = subprocess.Popen([sys.executable, __file__, "--peer", address], cwd=ROOT)
    done = t0 = cpu0 = 0
    while done < n_groups:
        identity, payload = await router.recv_multipart()
        if identity == b"actor-0":
            if b"work_request" in payload:
                slots = msgpack.unpackb(payload)["slots"]  # the initial credit, then BATCH per batch
                for _ in range(slots):
                    await router.send_multipart([identity, work])
            elif len(payload) > 1000:  # a rollout group
                await router.send_multipart([identity, ack])
                await router.send_multipart([b"verifier-0", job])
        elif b"verdicts" in payload:
            done += 1
            if done == STEP_GROUPS:
                t0, cpu0 = time.perf_counter(), time.process_time()
    rate = (n_groups - STEP_GROUPS) / (time.perf_counter() - t0)
    cpu = (time.process_time() - cpu0) / (n_groups - STEP_GROUPS)
    for who in (b"actor-0", b"verifier-0"):
        await router.send_multipart([who, stop])
    proc.wait(30)
    router.close()
    return rate, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=4000, help="groups per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "transport.json"))
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        return asyncio.run(peer(args.peer))
    rates: dict[str, list[float]] = {"hub": [], "raw": []}
    cpus: dict[str, list[float]] = {"hub": [], "raw": []}
    scheds: list[list[float]] = []
    for rep in range(args.repeats):
        for arm in (("hub", "raw") if rep % 2 == 0 else ("raw", "hub")):
            rate, cpu, *sched = asyncio.run((hub_arm if arm == "hub" else raw_arm)(args.groups))
            rates[arm].append(rate)
            cpus[arm].append(cpu)
            scheds += sched
            loop_share = f", event loop on a CPU {sched[0][0]:.0%} / waiting for one {sched[0][1]:.0%} of the time" if sched else ""
            print(f"{arm:4s} repeat {rep}: {rate:8.0f} groups/s ({GROUP * rate:8.0f} samples/s), "
                  f"{cpu * 1e6:6.0f} us CPU per group{loop_share}", flush=True)
    hub, raw = float(np.median(rates["hub"])), float(np.median(rates["raw"]))
    cpu_hub, cpu_raw = float(np.median(cpus["hub"])), float(np.median(cpus["raw"]))
    ratios = [h / r for h, r in zip(rates["hub"], rates["raw"])]
    print(f"hub {hub:.0f} groups/s = {GROUP * hub:.0f} samples/s; raw pyzmq {raw:.0f} groups/s; "
          f"hub/raw {hub / raw:.2f} (per repeat {', '.join(f'{r:.2f}' for r in ratios)}); "
          f"CPU per group hub {cpu_hub * 1e6:.0f} us, raw {cpu_raw * 1e6:.0f} us "
          f"(one core: at most {1 / cpu_hub:.0f} vs {1 / cpu_raw:.0f} groups/s); load average {os.getloadavg()[0]:.1f}")
    out = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "groups_per_s": {"hub": hub, "raw": raw}, "samples_per_s": {"hub": GROUP * hub, "raw": GROUP * raw},
           "hub_over_raw": hub / raw, "per_repeat": rates, "ratio_per_repeat": ratios,
           "cpu_us_per_group": {"hub": cpu_hub * 1e6, "raw": cpu_raw * 1e6},
           "cpu_us_per_group_per_repeat": {k: [c * 1e6 for c in v] for k, v in cpus.items()},
           "hub_loop_share_on_cpu_and_waiting_per_repeat": scheds,
           "group_size": GROUP, "tokens_per_sample": TOKENS, "loadavg": os.getloadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
