"""The verifier service: scores completions in a pool of worker processes (DESIGN §1, §7).

What it does, top to bottom: refuse to start for `code` if the sandbox lacks a kernel
limit the config did not give up (`sandbox.require`) -> connect (DEALER) -> `hello` ->
`work_request` (slots) -> for each `verify_job`: score each completion on its own in a
scorer worker process (the task's `score`, run in the worker's main thread) under a
per-completion timeout counted from when a worker takes it -> `verdicts` stamped with the
task's verifier version. A completion that times out gets reward 0 with reason `timeout`
and the stuck pool is replaced; completions that were running beside it in that pool are
scored again on the new one, so one hostile completion never zeroes its siblings, other
jobs, or blocks the learner. A scorer that raises on a completion (a scorer bug, or an
answer built to crash it) scores that completion 0 with reason `scorer_error` (logged,
counted, not cached), so the job still gets every verdict. A learner silent for
`peer_timeout_s` means reconnect and say hello again; a `not_registered` answer (the
learner restarted) means hello again at once. The verifier exits 0 when the learner says
the run is over (`run_over`), and keeps reconnecting while the learner is merely gone.

What it does not do: it runs no model output itself in this process (workers do, and
tasks that execute code use the sandbox), keeps no state between jobs, and never talks
to actors.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from protocol.transport import DealerEndpoint
from verifiers.sandbox import require as require_sandbox
from verifiers.sandbox import sandbox_mode
from verifiers.scoring import TASK_NAMES, score_many, settings_from_config, task_version

log = logging.getLogger("scca.verifier")

P = "scca_verifier_"
JOBS = Counter(P + "jobs_total", "verify jobs answered", ["task"])
TIMEOUTS = Counter(P + "timeouts_total", "completions that hit the timeout")
SCORER_ERRORS = Counter(P + "scorer_errors_total", "completions whose scorer raised (scored 0, reason scorer_error)")
LATENCY = Histogram(P + "latency_seconds", "Seconds per verify job", buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
REWARD = Gauge(P + "reward_mean", "Mean reward of the last job")
PASSED = Counter(P + "samples_passed_total", "Completions with reward 1")
SCORED = Counter(P + "samples_scored_total", "Completions scored")
LEARNER_UP = Gauge(P + "learner_alive", "1 while the learner answers")
CACHE_HITS = Counter(P + "cache_hits_total", "Completions answered from the verdict cache")
SANDBOX = Gauge(P + "sandbox_mode", "1 for the sandbox mode this verifier runs code in", ["mode"])

RECV_POLL_S = 0.5
CACHE_MAX = 100_000  # verdicts kept (oldest evicted first)
UNCACHED = ("timeout", "worker_died", "worker_replaced", "scorer_error")  # faults, not verdicts: score again next time


class VerdictCache:
    """(task version, prompt, meta, completion) -> (reward, detail); bounded, oldest out first."""

    def __init__(self, max_items: int = CACHE_MAX):
        self.max_items = max_items
        self.items: collections.OrderedDict[str, tuple[float, dict]] = collections.OrderedDict()

    @staticmethod
    def key(version: str, prompt: str, meta: dict, completion: str) -> str:
        blob = json.dumps([version, prompt, meta, completion], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> tuple[float, dict] | None:
        return self.items.get(key)

    def put(self, key: str, value: tuple[float, dict]) -> None:
        self.items[key] = value
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)


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
        self.free_workers = asyncio.Semaphore(workers)
        self.settings = settings_from_config(cfg)
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.cache = VerdictCache()
        self.run_id: str | None = None  # from the learner's welcome
        self.mode = sandbox_mode()
        if cfg.task.name == "code":   # refuse now, with what is missing, not at the first job
            self.mode = f"{self.mode}/{require_sandbox(cfg.verifier.accept_weak_sandbox)}"
        self.active = 0  # jobs being scored now
        self.busy_s = 0.0  # seconds with at least one job being scored (logged at exit)
        self.busy_since = 0.0
        self.started = time.monotonic()
        SANDBOX.labels(self.mode).set(1)
        log.info("sandbox mode: %s", self.mode)
        if cfg.task.reward:  # fail at start, in one line, if the plug-in cannot be imported
            log.info("plug-in reward %s", task_version(cfg.task.reward))

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
                elif msg["kind"] == "welcome":
                    self.run_id = msg["run_id"]
                elif msg["kind"] == "run_over" and msg["run_id"] in (self.run_id, None):
                    log.info("learner says the run is over (%s): %s; exiting", msg["reason"], msg["message"])
                    self.stopping.set()
                elif msg["kind"] == "error":
                    log.warning("learner says %s: %s", msg["code"], msg["message"])
                    if msg["code"] == "not_registered":  # the learner restarted or dropped us: join again
                        await self.say_hello()
        finally:
            self.ep.close()
            _kill_pool(self.pool)

    async def say_hello(self) -> None:
        caps = {"tasks": ",".join(TASK_NAMES), "slots": self.cfg.verifier.slots, "pid": os.getpid(),
                "sandbox": self.mode}
        await self.ep.send("hello", role="verifier", name=self.name, capabilities=caps)
        await self.ep.send("work_request", slots=self.cfg.verifier.slots)

    async def verify(self, job: dict) -> None:
        """Score a job, counting the time any job is in progress as busy."""
        if self.active == 0:
            self.busy_since = time.monotonic()
        self.active += 1
        try:
            await self.verify_job(job)
        finally:
            self.active -= 1
            if self.active == 0:
                self.busy_s += time.monotonic() - self.busy_since

    async def verify_job(self, job: dict) -> None:
        """Score a job: cached verdicts first, the rest in the pool under the job timeout."""
        t = time.perf_counter()
        n = len(job["completions"])
        try:
            version = f"{task_version(job['task'])}/{self.mode}"
        except ValueError as exc:  # unknown task: the learner is told, nothing is scored
            await self.ep.send("error", code="bad_job", message=f"{job['job_id']}: {exc}"[:1000])
            await self.answer(job, [0.0] * n, [{"reason": "bad_job"}] * n, "error", t)
            return
        keys = [VerdictCache.key(version, job["prompt"], job["meta"], c) for c in job["completions"]]
        found = [self.cache.get(k) for k in keys]
        found = [None if v is None else (v[0], {**v[1], "cached": True}) for v in found]
        misses = [i for i, v in enumerate(found) if v is None]
        CACHE_HITS.inc(n - len(misses))
        if misses:
            scored = await self.score(job, [job["completions"][i] for i in misses])
            for i, value in zip(misses, scored):
                found[i] = value
                if value[1].get("reason") not in UNCACHED:
                    self.cache.put(keys[i], value)
        details = [{**d, "sandbox": self.mode} for _, d in found]
        await self.answer(job, [r for r, _ in found], details, version, t)

    async def score(self, job: dict, completions: list[str]) -> list[tuple[float, dict]]:
        return list(await asyncio.gather(*(self.score_one(job, c) for c in completions)))

    async def score_one(self, job: dict, completion: str, retries: int = 1) -> tuple[float, dict]:
        """One completion in the pool; its timeout starts when a worker is free for it."""
        loop = asyncio.get_running_loop()
        async with self.free_workers:
            pool = self.pool
            fut = loop.run_in_executor(pool, score_many, job["task"], job["prompt"], job["meta"],
                                       [completion], self.settings)
            try:
                rewards, details, _ = await asyncio.wait_for(fut, self.cfg.verifier.completion_timeout_s)
                return rewards[0], details[0]
            except BrokenProcessPool:
                if pool is self.pool:     # a worker died under this completion: replace the pool
                    self.replace_pool()
                    return 0.0, {"reason": "worker_died"}
            except asyncio.TimeoutError:  # fault policy: reward 0 with a reason, replace the stuck pool
                TIMEOUTS.inc()
                if pool is self.pool:
                    self.replace_pool()
                return 0.0, {"reason": "timeout"}
            except Exception as exc:  # noqa: BLE001 - fault policy: a scorer that raises scores this completion 0,
                SCORER_ERRORS.inc()   # and the job still gets every verdict (else the hub re-sends it forever)
                log.error("scorer %s raised on a completion of %s: %s: %s", job["task"], job["job_id"],
                          type(exc).__name__, exc)
                return 0.0, {"reason": "scorer_error", "error": f"{type(exc).__name__}: {exc}"}
        if retries == 0:                  # another completion's timeout replaced the pool under us
            return 0.0, {"reason": "worker_replaced"}
        return await self.score_one(job, completion, retries - 1)

    def replace_pool(self) -> None:
        old, self.pool = self.pool, _new_pool(self.workers)
        _kill_pool(old)

    async def answer(self, job: dict, rewards: list[float], details: list[dict], version: str, t: float) -> None:
        n = len(rewards)
        LATENCY.observe(time.perf_counter() - t)
        JOBS.labels(job["task"]).inc()
        SCORED.inc(n)
        PASSED.inc(sum(1 for r in rewards if r >= 1.0))
        REWARD.set(sum(rewards) / n)
        await self.ep.send("verdicts", job_id=job["job_id"], rewards=rewards, details=details, verifier_version=version)


async def serve(cfg, address: str, name: str, metrics_port: int, workers: int) -> None:
    server, _ = start_http_server(metrics_port, addr=cfg.hub.metrics_addr)
    log.info("verifier %s -> %s, metrics on :%d", name, address, server.server_port)
    verifier = Verifier(cfg, address, name, workers)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, verifier.stopping.set)
    await verifier.run()
    log.info("busy: scoring %.2fs, alive %.2fs", verifier.busy_s, time.monotonic() - verifier.started)
    server.shutdown()


def main(cfg, address: str, name: str, metrics_port: int = 0, workers: int = 1) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    asyncio.run(serve(cfg, address, name, metrics_port, workers))
    logging.shutdown()
    # A generate/score call still running in a worker thread is abandoned, not awaited: the
    # learner's lease re-dispatches its work, and waiting could hold the stop for minutes.
    os._exit(0)
