"""The actor service: asks the learner for prompt groups, samples them, sends rollouts back (DESIGN §1, §4).

What it does, top to bottom: connect (DEALER) -> `hello` -> `welcome` carries the current
weights -> load and verify them -> `weights_loaded` (digest + canary) -> `work_request`
-> then one worker drains a queue of `work` and `weights_published` messages:
work is generated in a thread (the event loop keeps heartbeating) from the prompt token ids
the learner rendered (protocol/prompts.py; the text, encoded raw, where a work message has
none) and answered with one `rollout_group` per prompt, stamped with the weights version
and digest; a weights message jumps ahead of queued work (and replaces an older one still
queued), so queued work is drawn from the newest weights, and reloads in place after
checksum verification. A learner silent for `peer_timeout_s` means reconnect and say hello
again; a learner that answers `not_registered` (it restarted, or dropped us while we were
stopped) gets a new hello at once. The actor keeps trying for as long as the learner is
merely gone, and exits 0 when the learner says the run is over (`run_over`).

With `[actor] broadcast_rank` the actor joins the learner's torch.distributed group after
its first weights and takes every later version from the broadcast (actors/broadcast.py),
proving it the same way.

What it does not do: it never sees answers or rewards and keeps no state worth saving (a
crash loses only work the learner's leases re-dispatch). Weight files come from the shared
folder named in the message, or over the wire with `[actor] weights_dir`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge, start_http_server

from actors.engines import make_engine
from actors.remote_weights import RemoteWeights
from protocol.transport import DealerEndpoint
from protocol.weights import WeightsError

log = logging.getLogger("scca.actor")

P = "scca_actor_"
ROLLOUTS = Counter(P + "rollouts_generated_total", "Samples generated")
TOKENS = Counter(P + "tokens_generated_total", "Completion tokens generated")
TOK_PER_S = Gauge(P + "generation_tokens_per_second", "Tokens/s of the last work item")
QUEUE = Gauge(P + "queue_depth", "Work and weights messages waiting")
VERSION = Gauge(P + "weights_version", "Loaded weights version")
FETCH_S = Gauge(P + "weights_fetch_seconds", "Seconds to fetch the last snapshot over the wire")
LOAD_S = Gauge(P + "weights_load_seconds", "Seconds to verify and load the last snapshot")
ERRORS = Counter(P + "errors_received_total", "error messages received from the learner", ["code"])
LEARNER_UP = Gauge(P + "learner_alive", "1 while the learner answers")
BUSY_S = Counter(P + "generate_seconds_total", "Seconds spent generating")

RECV_POLL_S = 0.5  # how long one recv waits before the loop checks liveness


class Actor:
    def __init__(self, cfg, address: str, name: str):
        self.cfg = cfg
        self.name = name
        self.ep = DealerEndpoint(address, name, cfg.hub.heartbeat_s)
        self.engine = None  # HFEngine or VLLMEngine, built from the first weights
        self.queue: collections.deque[dict] = collections.deque()
        self.wakeup = asyncio.Event()
        self.busy = False
        self.stopping = asyncio.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="generate")
        self.broadcast_info: dict | None = None  # the learner's broadcast group (from `welcome`)
        self.bcast = None  # actors.broadcast.BroadcastWeights once this actor joined the group
        self.remote = RemoteWeights(Path(cfg.actor.weights_dir), self.ep.send) if cfg.actor.weights_dir else None
        self.run_id: str | None = None  # from the learner's welcome
        self.busy_s = {"generate": 0.0, "weights": 0.0}  # seconds spent, logged at exit (bench/pipeline.py reads it)
        self.started = time.monotonic()

    async def run(self) -> None:
        self.ep.start_heartbeats()
        await self.say_hello()
        worker = asyncio.get_running_loop().create_task(self.work_loop())
        try:
            while not self.stopping.is_set():
                msg = await self.ep.recv(timeout=RECV_POLL_S)
                if msg is None:
                    if self.ep.silent_for() > self.cfg.hub.peer_timeout_s:
                        LEARNER_UP.set(0)
                        log.warning("learner silent for %.1fs: reconnecting", self.ep.silent_for())
                        self.ep.reconnect()
                        self.queue.clear()
                        await self.say_hello()
                    continue
                LEARNER_UP.set(1)
                await self.on_message(msg)
        finally:
            worker.cancel()
            self.ep.close()

    async def say_hello(self) -> None:
        caps = {"engine": self.cfg.actor.engine, "slots": self.cfg.actor.slots, "pid": os.getpid()}
        await self.ep.send("hello", role="actor", name=self.name, capabilities=caps)

    async def on_message(self, msg: dict) -> None:
        kind = msg["kind"]
        if kind == "welcome":
            self.run_id = msg["run_id"]
            self.broadcast_info = msg["broadcast"]
            if msg["weights"] is not None:
                self.enqueue({"kind": "weights_published", **msg["weights"]})
        elif kind in ("work", "weights_published"):
            self.enqueue(msg)
        elif kind == "weights_chunk" and self.remote is not None:
            self.remote.route(msg)
        elif kind == "run_over" and msg["run_id"] in (self.run_id, None):
            log.info("learner says the run is over (%s): %s; exiting", msg["reason"], msg["message"])
            self.stopping.set()
        elif kind == "error":
            if self.remote is not None:
                self.remote.route(msg)  # weights_unavailable fails a fetch now instead of at its timeout
            ERRORS.labels(msg["code"]).inc()
            log.warning("learner says %s: %s", msg["code"], msg["message"])
            if msg["code"] == "not_registered":  # the learner restarted or dropped us: join again
                self.queue.clear()
                await self.say_hello()
        # heartbeat and ack need no action: any message proves the learner is alive

    def enqueue(self, msg: dict) -> None:
        """New weights go to the front, replacing any still queued (work waiting here is drawn
        from the newest version this actor has heard of: its policy lag counts from there);
        `urgent` work (a screened prompt's continuation, its group waits on it) goes right
        behind them; other work queues in order."""
        if msg["kind"] == "weights_published":
            self.queue = collections.deque(m for m in self.queue if m["kind"] != "weights_published")
            self.queue.appendleft(msg)
        elif msg.get("urgent"):
            self.queue.insert(1 if self.queue and self.queue[0]["kind"] == "weights_published" else 0, msg)
        else:
            self.queue.append(msg)
        QUEUE.set(len(self.queue))
        self.wakeup.set()

    async def work_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            await self.load_broadcast(loop)
            while self.queue:
                msg = self.queue.popleft()
                QUEUE.set(len(self.queue))
                if msg["kind"] == "weights_published":
                    if any(m["kind"] == "weights_published" for m in self.queue):
                        continue  # a newer version is already queued
                    if self.bcast is None or not self.bcast.active:  # in the group, versions come by broadcast
                        await self.load(loop, msg)
                        self.join_broadcast(loop)
                elif self.engine is not None:
                    await self.generate(loop, self.coalesce(msg))
                await self.load_broadcast(loop)
                await self.request_work()

    def coalesce(self, first: dict) -> list[dict]:
        """`first` plus the work queued right behind it with the same sampling, up to
        `batch_size` rows: one generate() call for all of them (8-row calls waste the CPU)."""
        batch, rows = [first], len(first["prompts"]) * first["group_size"]
        while self.queue and self.queue[0]["kind"] == "work":
            nxt = self.queue[0]
            key = ("sampling", "group_size", "eval", "hidden_k")  # urgent or not: one generate call
            same = all(nxt.get(k) == first.get(k) for k in key)
            more = len(nxt["prompts"]) * nxt["group_size"]
            if not same or rows + more > self.cfg.actor.batch_size:
                break
            batch.append(self.queue.popleft())
            rows += more
        QUEUE.set(len(self.queue))
        return batch

    async def load(self, loop, msg: dict) -> None:
        t = time.perf_counter()
        try:
            folder = await self.weights_folder(msg)
            if self.engine is None:
                self.engine = await loop.run_in_executor(self.pool, lambda: make_engine(self.cfg.actor, folder, self.name))
                log.info("engine %s ready", type(self.engine).__name__)
            else:
                await loop.run_in_executor(self.pool, self.engine.load_weights, folder, msg["manifest_sha256"])
        except (WeightsError, asyncio.TimeoutError) as exc:  # fault policy: keep the old weights, tell the learner
            log.error("refusing weights v%d: %s", msg["version"], exc)
            await self.ep.send("error", code="bad_weights", message=str(exc)[:1000])
            return
        await self.report_loaded(loop, t)

    async def report_loaded(self, loop, t: float) -> None:
        """`weights_loaded` with the digest and canary of what the engine now holds."""
        digest, canary = await loop.run_in_executor(self.pool, lambda: (self.engine.digest(), self.engine.canary()))
        self.digest = digest
        LOAD_S.set(time.perf_counter() - t)
        self.busy_s["weights"] += time.perf_counter() - t
        VERSION.set(self.engine.version)
        await self.ep.send("weights_loaded", version=self.engine.version, digest=digest, canary_logprob=canary)

    def join_broadcast(self, loop) -> None:
        """After the first weights, join the learner's broadcast group if this actor has a rank in it."""
        rank = self.cfg.actor.broadcast_rank
        if rank and self.bcast is None and self.broadcast_info is not None and self.engine is not None:
            from actors.broadcast import BroadcastWeights

            self.bcast = BroadcastWeights(self.ep.address, self.broadcast_info, rank, self.engine,
                                          wake=lambda: loop.call_soon_threadsafe(self.wakeup.set))

    async def load_broadcast(self, loop) -> None:
        """Load the newest broadcast version, if one arrived, and prove it (digest + canary)."""
        got = self.bcast.newest() if self.bcast is not None else None
        if got is None:
            return
        version, buf = got
        if isinstance(buf, Exception):
            log.error("refusing broadcast v%d: %s", version, buf)
            await self.ep.send("error", code="bad_weights", message=str(buf)[:1000])
            return
        t = time.perf_counter()
        await loop.run_in_executor(self.pool, self.bcast.apply, self.engine, version, buf)
        log.info("loaded broadcast v%d in %.2fs", version, time.perf_counter() - t)
        await self.report_loaded(loop, t)

    async def weights_folder(self, msg: dict) -> Path:
        """The snapshot's folder: the learner's own (shared filesystem) or a fetched copy."""
        if self.remote is None:
            return Path(msg["folder"])
        t = time.perf_counter()
        folder = await self.remote.fetch(msg["version"], msg["manifest_sha256"])
        FETCH_S.set(time.perf_counter() - t)
        return folder

    async def generate(self, loop, batch: list[dict]) -> None:
        """Sample every prompt of the coalesced work messages; one rollout_group per prompt."""
        s, n = batch[0]["sampling"], batch[0]["group_size"]
        todo = [(msg["work_id"], p) for msg in batch for p in msg["prompts"]]
        t = time.perf_counter()
        prompts = [p["text"] if p.get("token_ids") is None else p["token_ids"].tolist() for _, p in todo]
        groups = await loop.run_in_executor(self.pool, lambda: self.engine.generate(
            prompts, n, temperature=s["temperature"], top_p=s["top_p"],
            max_new_tokens=s["max_new_tokens"], batch_size=self.cfg.actor.batch_size,
            hidden_k=batch[0]["hidden_k"]))
        seconds = time.perf_counter() - t
        log.debug("generated %d rows (%d work items) in %.2fs", sum(len(g) for g in groups), len(batch), seconds)
        self.busy_s["generate"] += seconds
        BUSY_S.inc(seconds)
        n_tokens = sum(len(x.token_ids) for g in groups for x in g)
        ROLLOUTS.inc(sum(len(g) for g in groups))
        TOKENS.inc(n_tokens)
        TOK_PER_S.set(n_tokens / max(seconds, 1e-9))
        for (work_id, prompt), samples in zip(todo, groups):
            await self.ep.send(
                "rollout_group", work_id=work_id, prompt_id=prompt["id"], weights_version=self.engine.version,
                weights_digest=self.digest, gen_seconds=seconds,
                samples=[{"token_ids": x.token_ids.astype(np.int32), "logprobs": x.logprobs.astype(np.float32),
                          "entropy": None if x.entropy is None else x.entropy.astype(np.float16),
                          "hidden": None if x.hidden is None else x.hidden.astype(np.float16),
                          "finish_reason": x.finish_reason, "text": x.text} for x in samples])

    async def request_work(self) -> None:
        pending = sum(1 for m in self.queue if m["kind"] == "work")
        free = self.cfg.actor.slots - pending
        if free > 0 and self.engine is not None:
            await self.ep.send("work_request", slots=free)


async def serve(cfg, address: str, name: str, metrics_port: int) -> None:
    server, _ = start_http_server(metrics_port, addr=cfg.hub.metrics_addr)
    log.info("actor %s -> %s, metrics on :%d", name, address, server.server_port)
    actor = Actor(cfg, address, name)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, actor.stopping.set)
    await actor.run()
    alive = time.monotonic() - actor.started
    log.info("busy: generate %.2fs, weights %.2fs, alive %.2fs", actor.busy_s["generate"], actor.busy_s["weights"], alive)
    server.shutdown()


def main(cfg, address: str, name: str, metrics_port: int = 0) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    asyncio.run(serve(cfg, address, name, metrics_port))
    logging.shutdown()
    # A generate/score call still running in a worker thread is abandoned, not awaited: the
    # learner's lease re-dispatches its work, and waiting could hold the stop for minutes.
    os._exit(0)
