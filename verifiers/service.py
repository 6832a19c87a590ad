"""The verifier service: scores completions in a pool of worker processes (DESIGN §1, §7).

What it does, top to bottom: connect (DEALER) -> `hello` -> `work_request` (slots) ->
for each `verify_job`: score every completion in a scorer worker process (the task's
`score(prompt, meta, completion)`, run in the worker's main thread) under a per-job
timeout -> `verdicts` stamped with the task's verifier version. A job that times out
gets reward 0 with reason `timeout` and the stuck pool is replaced, so one hostile
completion never blocks the others or the learner. A learner silent for
`peer_timeout_s` means reconnect and say hello again.

What it does not do: it runs no model output itself in this process (workers do, and
tasks that execute code use the sandbox), keeps no state between jobs, and never talks
to actors.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import signal
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from protocol.transport import DealerEndpoint
from verifiers.scoring import TASK_NAMES, score_many

log = logging.getLogger("scca.verifier")

P = "scca_verifier_"
JOBS = Counter(P + "jobs_total", "verify jobs answered", ["task"])
TIMEOUTS = Counter(P + "timeouts_total", "verify jobs that hit the timeout")
LATENCY = Histogram(P + "latency_seconds", "Seconds per verify job", buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
REWARD = Gauge(P + "reward_mean", "Mean reward of the last job")
PASSED = Counter(P + "samples_passed_total", "Completions with reward 1")
SCORED = Counter(P + "samples_scored_total", "Completions scored")
LEARNER_UP = Gauge(P + "learner_alive", "1 while the learner answers")

RECV_POLL_S = 0.5
JOB_TIMEOUT_S = 30.0  # a whole job (all completions of one group) past this gets reward 0


def _new_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _kill_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kill every worker now (a stuck scorer never finishes by itself), then release the pool."""
    for proc in list((pool._processes or {}).values()):
        proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)


class Verifier:
    def __init__(self, cfg, address: str, name: str, workers: int):
        self.cfg, self.name, self.workers = cfg, name, workers
        self.ep = DealerEndpoint(address, name, cfg.hub.heartbeat_s)
        self.pool = _new_pool(workers)
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        self.ep.start_heartbeats()
        await self.say_hello()
        try:
            while not self.stopping.is_set():
                msg = await self.ep.recv(timeout=RECV_POLL_S)
                if msg is None:
                    if self.ep.silent_for() > self.cfg.hub.peer_timeout_s:
                        LEARNER_UP.set(0)
                        self.ep.reconnect()
                        await self.say_hello()
                    continue
                LEARNER_UP.set(1)
                if msg["kind"] == "verify_job":
                    task = asyncio.get_running_loop().create_task(self.verify(msg))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif msg["kind"] == "error":
                    log.warning("learner says %s: %s", msg["code"], msg["message"])
        finally:
            self.ep.close()
            _kill_pool(self.pool)

    async def say_hello(self) -> None:
        caps = {"tasks": ",".join(TASK_NAMES), "slots": self.cfg.verifier.slots, "pid": os.getpid()}
        await self.ep.send("hello", role="verifier", name=self.name, capabilities=caps)
        await self.ep.send("work_request", slots=self.cfg.verifier.slots)

    async def verify(self, job: dict) -> None:
        t = time.perf_counter()
        loop = asyncio.get_running_loop()
        n = len(job["completions"])
        fut = loop.run_in_executor(self.pool, score_many, job["task"], job["prompt"], job["meta"], job["completions"])
        try:
            rewards, details, version = await asyncio.wait_for(fut, JOB_TIMEOUT_S)
        except asyncio.TimeoutError:  # fault policy: reward 0, replace the stuck pool
            TIMEOUTS.inc()
            old, self.pool = self.pool, _new_pool(self.workers)
            _kill_pool(old)
            rewards, details, version = [0.0] * n, [{"reason": "timeout"}] * n, "timeout"
        except ValueError as exc:  # unknown task or malformed meta: the learner is told, nothing is scored
            await self.ep.send("error", code="bad_job", message=f"{job['job_id']}: {exc}"[:1000])
            rewards, details, version = [0.0] * n, [{"reason": "bad_job"}] * n, "error"
        LATENCY.observe(time.perf_counter() - t)
        JOBS.labels(job["task"]).inc()
        SCORED.inc(n)
        PASSED.inc(sum(1 for r in rewards if r >= 1.0))
        REWARD.set(sum(rewards) / n)
        await self.ep.send("verdicts", job_id=job["job_id"], rewards=rewards, details=details, verifier_version=version)


async def serve(cfg, address: str, name: str, metrics_port: int, workers: int) -> None:
    server, _ = start_http_server(metrics_port, addr="127.0.0.1")
    log.info("verifier %s -> %s, metrics on :%d", name, address, server.server_port)
    verifier = Verifier(cfg, address, name, workers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, verifier.stopping.set)
    await verifier.run()
    server.shutdown()


def main(cfg, address: str, name: str, metrics_port: int = 0, workers: int = 1) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    asyncio.run(serve(cfg, address, name, metrics_port, workers))
    logging.shutdown()
    # A generate/score call still running in a worker thread is abandoned, not awaited: the
    # learner's lease re-dispatches its work, and waiting could hold the stop for minutes.
    os._exit(0)
