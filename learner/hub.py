"""The hub: the learner's asyncio broker between actors, verifiers and the trainer (DESIGN §1, §3).

What it does:
* registers peers (`hello` -> `welcome` with the current weights and, when the learner
  runs one, its weights broadcast group), tracks their credit
  (`work_request` slots) and liveness (any message is a heartbeat);
* dispatches one prompt group per `work` message (text + the rendered token ids) to actors
  with credit, at most `prompts_per_step * (max_lag + 1)` groups in flight so staleness
  stays bounded; with SPEED screening (`[learner] screen_samples`, learner/screening.py) a
  prompt is first sampled k times, dropped if those agree, else continued (urgently) to a
  whole group;
* forwards each `rollout_group` to a verifier as a `verify_job` (task = the plug-in reward
  `[task] reward` when set, else the task name), acks it, and hands the scored group to
  the trainer; every transition is written to the ledger first;
* re-dispatches work whose lease ran out or whose peer went silent, and re-sends verify
  jobs likewise (ids are idempotent: a late duplicate is ignored);
* checks each `weights_loaded` (digest + canary) against the learner's and quarantines a
  mismatching actor (its work is re-dispatched, it gets no more);
* runs held-out evaluations through the same actors and verifiers (greedy, or the mean
  of `eval_samples` samples at the training temperature);
  serves snapshot byte ranges to actors without the shared filesystem, as raw-frame chunks
  (weights_server.py);
* handles the messages that arrived together (up to `RECV_BATCH`, taken from the socket
  without waiting) as one batch: their ledger transitions, and those of the dispatches
  that follow, in one SQLite transaction, and every reply they cause sent only after
  that transaction has committed (the endpoint holds them); a pump (dispatch of work and
  verify jobs) runs once per batch, and after each `work_request` at once (its slots
  replace the actor's credit, so two requests in one batch must not merge);
* counts valid but unwanted messages (a kind the learner does not take, a role sending
  another role's message, results for work it never sent) in `unwanted`, changes no
  state for them, and answers them with at most one `error` per peer per
  `ERROR_REPLY_S` (a flood is not echoed back).

What it does not do: it never computes gradients (the trainer thread does) and never
reads answers except to pass `meta` on to verifiers.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import random
import threading
import time
from pathlib import Path

import numpy as np

from learner import metrics as M
from learner.ledger import Ledger
from learner.screening import Screening
from learner.weights_server import read_chunk
from protocol.messages import MAX_WEIGHTS_CHUNK
from protocol.summaries import HIDDEN_K
from protocol.transport import RouterEndpoint

log = logging.getLogger("scca.hub")

CANARY_TOL = 1e-3  # |canary logprob difference| above this quarantines an actor
EVAL_CHUNK = 50  # held-out samples per eval work message (prompts x eval_samples)
HOUSEKEEPING_S = 0.5  # period of the lease / liveness sweep
ERROR_REPLY_S = 1.0  # at most one error reply per peer identity this often
# An actor that refuses the newest snapshot (a checksum mismatch on disk) gets it written again,
# at most this often: actors holding older weights would otherwise generate only stale groups
# and the learner, which publishes only after a step, would never step again.
REPUBLISH_MIN_S = 10.0
MAX_PEERS = 4096  # registered peers; a hello beyond this is refused as unwanted
RECV_BATCH = 256  # messages handled in one transaction at most (what is queued when the loop wakes)
ROLE_KINDS = {"actor": {"work_request", "rollout_group", "weights_loaded", "weights_fetch", "error"},
              "verifier": {"work_request", "verdicts", "error"}}  # what each role may send after hello


@dataclasses.dataclass
class Peer:
    identity: bytes
    role: str
    name: str
    credit: int = 0
    last_seen: float = 0.0
    version: int = -1
    quarantined: bool = False
    max_credit: int = 0  # slots of its last work_request: verdicts never raise credit above it


@dataclasses.dataclass
class Group:
    """A generated, then scored, prompt group on its way to the trainer."""

    item_id: str
    prompt_id: str
    prompt: str
    weights_version: int
    samples: list[dict]
    rewards: list[float] | None = None
    details: list[dict] | None = None
    screen_version: int | None = None  # SPEED: version of the screening samples of a merged group
    prompt_ids: np.ndarray | None = None  # int32 [P]: the rendered prompt the actor generated from


def _wire_prompt(row: dict) -> dict:
    """A `work` prompt: id, text and the rendered token ids (learner/prompts.py), when the row has them."""
    out = {"id": row["id"], "text": row["prompt"]}
    if row.get("token_ids") is not None:
        out["token_ids"] = row["token_ids"]
    return out


class Hub:
    def __init__(self, cfg, ledger: Ledger, train_rows: list[dict], heldout_rows: list[dict], to_trainer, run_id: str):
        self.cfg = cfg
        self.ledger = ledger
        self.rows = {r["id"]: r for r in train_rows}
        self.order = [r["id"] for r in train_rows]
        random.Random(cfg.learner.seed).shuffle(self.order)
        self.heldout = heldout_rows
        self.to_trainer = to_trainer  # queue.Queue[Group]
        # a screen dropped without signal never reaches the trainer's inbox: shown to the stall
        # monitor this way (learner/stall.py WatchedInbox), so an all-zero run still stalls
        self.observe_dropped = getattr(to_trainer, "observe_dropped", lambda group: None)
        self._handoff: list[Group] = []  # scored groups of the batch being handled, for the trainer after its commit
        self.run_id = run_id
        self.ep = RouterEndpoint(cfg.hub.bind)
        self.peers: dict[bytes, Peer] = {}
        self.retry: collections.deque[str] = collections.deque()  # item ids waiting for an actor
        self.verify_queue: collections.deque[str] = collections.deque()  # item ids waiting for a verifier
        self.pending: dict[str, Group] = {}  # generated, not yet scored
        self.cursor = int(ledger.get_meta("cursor", "0"))
        self.version = 0
        self.weights: dict | None = None  # current weights_published fields
        self.weights_root: Path | None = None  # folder of the published snapshots
        self.expected: dict[int, tuple[str, float]] = {}  # version -> (digest, canary)
        self.training_open = True
        self.eval: dict | None = None
        self.digest_ok = 0
        self.sync_events: list[dict] = []  # every weights_loaded, checked (written to weights_sync.jsonl)
        self.digest_bad = 0
        self.weights_refused = 0  # bad_weights errors: an actor refused a snapshot (checksum)
        self.republish = threading.Event()  # set here, read by the trainer: write the newest snapshot again
        self._republished_at = -math.inf
        self.unwanted: collections.Counter[str] = collections.Counter()  # reason -> valid but unwanted messages
        self._replied: dict[bytes, float] = {}  # identity -> last error reply (rate limit)
        self.samples_generated = 0  # training samples received (first copies), kept or not
        self.broadcast: dict | None = None  # announced in `welcome` when the learner runs a broadcast group
        screen = cfg.learner.screen_samples if cfg.loss.drop_no_signal else 0  # groups without signal are kept: no screening
        self.screening = Screening(cfg.actor.group_size, screen)  # SPEED (learner/screening.py)

    # --- main loop -----------------------------------------------------------------
    async def serve(self) -> None:
        housekeeping = asyncio.get_running_loop().create_task(self._housekeeping())
        try:
            while True:
                batch = await self.ep.recv_batch(RECV_BATCH)
                M.BAD_MESSAGES.set(self.ep.bad_messages)
                await self.handle_batch(batch)
        finally:
            housekeeping.cancel()

    async def handle_batch(self, batch: list[tuple[bytes, dict]]) -> None:
        """Messages that arrived together: their transitions and the pump's dispatches in one
        ledger transaction; the replies leave, and the scored groups go to the trainer (all at
        once: one wake-up of its thread, not one per group), after its commit."""
        with self.ep.hold(), self.ledger.batch():
            for identity, msg in batch:
                await self.handle(identity, msg)
            await self.pump()
        handoff, self._handoff = self._handoff, []
        for group in handoff:
            self.to_trainer.put(group)

    async def handle(self, identity: bytes, msg: dict) -> None:
        peer = self.peers.get(identity)
        if peer is not None:
            peer.last_seen = time.monotonic()
        kind = msg["kind"]
        if kind == "hello":
            return await self._on_hello(identity, msg)
        if peer is None:
            return await self._unwanted(identity, "not_registered", f"send hello before {kind}")
        if kind == "heartbeat":
            return None  # any message is a heartbeat: last_seen is already updated
        if kind not in ROLE_KINDS[peer.role]:
            return await self._unwanted(identity, "unexpected_kind", f"the learner does not take {kind!r} from a {peer.role}")
        await getattr(self, f"_on_{kind}")(peer, msg)

    async def _unwanted(self, identity: bytes, reason: str, text: str) -> None:
        """Count a valid but unwanted message; answer it at most once per ERROR_REPLY_S."""
        self._count_unwanted(reason)
        now = time.monotonic()
        if now - self._replied.get(identity, -ERROR_REPLY_S) < ERROR_REPLY_S:
            return
        if len(self._replied) > MAX_PEERS:
            self._replied.clear()
        self._replied[identity] = now
        await self.ep.send(identity, "error", code=reason, message=text)

    # --- handlers ------------------------------------------------------------------
    async def _on_hello(self, identity: bytes, msg: dict) -> None:
        if identity not in self.peers and len(self.peers) >= MAX_PEERS:
            return await self._unwanted(identity, "too_many_peers", f"the learner holds {MAX_PEERS} peers already")
        self.ep.unreachable.discard(identity)
        old = self.peers.pop(identity, None)
        if old is not None:
            self._release(old, "reconnect")
        self.peers[identity] = Peer(identity, msg["role"], msg["name"], last_seen=time.monotonic())
        log.info("peer %s joined as %s", msg["name"], msg["role"])
        await self.ep.send(identity, "welcome", run_id=self.run_id, weights=self.weights, broadcast=self.broadcast)
        self._update_peer_metrics()

    async def _on_error(self, peer: Peer, msg: dict) -> None:
        log.warning("peer %s reported error %s: %s", peer.name, msg["code"], msg["message"])
        M.PEER_ERRORS.inc()
        if msg["code"] == "bad_weights":
            self.weights_refused += 1
            newest = self.weights is not None and Path(self.weights["folder"]).name in msg["message"]
            if newest and time.monotonic() - self._republished_at >= REPUBLISH_MIN_S:
                self._republished_at = time.monotonic()
                self.republish.set()

    async def _on_work_request(self, peer: Peer, msg: dict) -> None:
        peer.credit = peer.max_credit = msg["slots"]
        await self.pump()

    async def _on_weights_loaded(self, peer: Peer, msg: dict) -> None:
        expected = self.expected.get(msg["version"])
        if expected is None:
            return await self._unwanted(peer.identity, "unknown_version", f"version {msg['version']} was never published")
        digest, canary = expected
        ok = msg["digest"] == digest and abs(msg["canary_logprob"] - canary) <= CANARY_TOL
        self.sync_events.append({"peer": peer.name, "version": msg["version"], "digest": msg["digest"], "expected_digest": digest,
                                 "canary": msg["canary_logprob"], "expected_canary": canary, "ok": ok, "time": time.time()})
        if not ok:
            self.digest_bad += 1
            M.DIGEST_MISMATCH.inc()
            log.error("quarantining %s: v%d digest %s canary %.6f, expected %s %.6f", peer.name, msg["version"],
                      msg["digest"][:12], msg["canary_logprob"], digest[:12], canary)
            peer.quarantined = True
            self._release(peer, "quarantined")
            await self.ep.send(peer.identity, "error", code="quarantined", message="weights digest or canary mismatch")
            return
        self.digest_ok += 1
        peer.version = msg["version"]

    async def _on_weights_fetch(self, peer: Peer, msg: dict) -> None:
        """Serve a byte range of a snapshot file to an actor without the shared filesystem,
        as consecutive `weights_chunk`s of at most MAX_WEIGHTS_CHUNK bytes (raw frames)."""
        offset, end = msg["offset"], msg["offset"] + msg["length"]
        while True:
            n = min(MAX_WEIGHTS_CHUNK, end - offset)
            chunk = read_chunk(self.weights_root, msg["version"], msg["file"], offset, n) if self.weights_root else None
            if chunk is None:
                await self.ep.send(peer.identity, "error", code="weights_unavailable",
                                   message=f"v{msg['version']}/{msg['file']} is not a file of a kept snapshot")
                return
            data, size = chunk
            M.WEIGHT_BYTES_SERVED.inc(len(data))
            await self.ep.send(peer.identity, "weights_chunk", attachment=data, version=msg["version"],
                               file=msg["file"], offset=offset, size=size)
            offset += len(data)
            if not data or offset >= min(end, size):
                return
            await asyncio.sleep(0)  # other peers' messages between chunks

    async def _on_rollout_group(self, peer: Peer, msg: dict) -> None:
        wanted = True
        if not peer.quarantined:
            on = self._on_eval_rollout if msg["work_id"].startswith("eval-") else self._on_train_rollout
            wanted = on(msg) is not False
        if wanted:  # work the learner never sent is counted, not acked
            await self.ep.send(peer.identity, "ack", ids=[msg["work_id"]])
        # its verify job goes out in the pump that ends the batch (handle_batch)

    def _on_train_rollout(self, msg: dict) -> bool | None:
        item_id = self.screening.item_of(msg["work_id"])
        expected = self.expected.get(msg["weights_version"])
        if expected is None or expected[0] != msg["weights_digest"]:
            M.DIGEST_MISMATCH.inc()
            return  # unverifiable weights: the lease will re-dispatch this item
        row = self.rows.get(msg["prompt_id"])
        if (row is None or item_id.rsplit("@", 1)[0] != row["id"]
                or len(msg["samples"]) != self.screening.size(msg["work_id"])):
            return self._count_unwanted("unknown_work")
        if not self.screening.expected(msg["work_id"]) or not self.ledger.generated(item_id, self.cfg.hub.verify_lease_s):
            M.DUPLICATES.inc()
            return
        self.samples_generated += len(msg["samples"])
        self.pending[item_id] = Group(item_id, row["id"], row["prompt"], msg["weights_version"], msg["samples"],
                                      prompt_ids=row.get("token_ids"))
        self.verify_queue.append(item_id)
        M.observe_rollout(msg)

    def _on_eval_rollout(self, msg: dict) -> bool | None:
        ev = self.eval
        if ev is None or msg["weights_version"] != ev["version"] or msg["prompt_id"] in ev["texts"]:
            return
        if msg["prompt_id"] not in ev["rows"] or len(msg["samples"]) != self.cfg.learner.eval_samples:
            return self._count_unwanted("unknown_work")
        ev["texts"][msg["prompt_id"]] = [s["text"] for s in msg["samples"]]
        ev["progress"] = time.monotonic()
        self.verify_queue.append(f"eval-{ev['version']}-{msg['prompt_id']}")

    async def _on_verdicts(self, peer: Peer, msg: dict) -> None:
        peer.credit = min(peer.credit + 1, peer.max_credit)  # unsolicited verdicts never inflate it
        job_id = msg["job_id"]
        if job_id.startswith("eval-"):
            ev = self.eval
            version, _, pid = job_id[len("eval-"):].partition("-")
            if not version.isdigit() or not pid:
                return self._count_unwanted("unknown_job")
            if ev is not None and int(version) == ev["version"] and pid not in ev["rewards"]:
                if pid not in ev["texts"] or len(msg["rewards"]) != len(ev["texts"][pid]):
                    return self._count_unwanted("unknown_job")
                ev["rewards"][pid] = list(msg["rewards"])
                ev["progress"] = time.monotonic()
                if len(ev["rewards"]) == len(self.heldout):
                    ev["done"].set()
        else:
            group = self.pending.get(job_id)
            if group is not None and len(msg["rewards"]) != len(group.samples):
                return self._count_unwanted("unknown_job")  # not an answer to the job we sent
            if group is not None and self.ledger.scored(job_id):
                del self.pending[job_id]
                group.rewards, group.details = msg["rewards"], msg["details"]
                M.observe_verdicts(msg)
                self._route_scored(group)
            elif self.ledger.state(job_id) is None:
                return self._count_unwanted("unknown_job")
            else:
                M.DUPLICATES.inc()
        # the freed verifier credit is used by the pump that ends the batch (handle_batch)

    def _count_unwanted(self, reason: str) -> bool:
        """Count a valid but unwanted message (no reply); False, so handlers can return it."""
        self.unwanted[reason] += 1
        M.UNWANTED.labels(reason).inc()
        return False
    def _route_scored(self, group: Group) -> None:
        """To the trainer; or, with SPEED screening, dropped (screen without signal) or
        back in line for its continuation, ahead of new prompts."""
        action, merged = self.screening.on_scored(group)
        M.SCREENED.labels(action).inc()
        if action == "train":
            self._handoff.append(merged)  # put into to_trainer by handle_batch, after the commit
        elif action == "drop":
            self.ledger.drop(group.item_id, "screened")
            self.observe_dropped(group)
        else:
            self.retry.appendleft(group.item_id)

    # --- dispatch ------------------------------------------------------------------
    def _window(self) -> int:
        """Groups allowed in flight: enough for max_lag + 1 steps, twice that when groups
        without signal are dropped (most of them are, early on), unless set explicitly."""
        lc = self.cfg.learner
        if lc.max_in_flight:
            return lc.max_in_flight
        return lc.prompts_per_step * (self.cfg.loss.max_lag + 1) * (2 if self.cfg.loss.drop_no_signal else 1)

    def _window_open(self) -> bool:
        """Training work may go out: items already in flight waiting in `retry` always (they
        hold their place in the window), new prompts while the window has room. With
        screening, also while fewer than prompts_per_step x max(max_lag, 1) groups have passed
        their screen and not yet been trained: every such group trains (none is dropped for
        lack of signal) unless it waits past max_lag, and the trainer takes them oldest first,
        one step's worth per step, so a backlog of B groups is trained B / prompts_per_step
        steps after it was generated: a deeper backlog would only wait until it is stale."""
        if not self.training_open:
            return False
        if self.retry:
            return True
        if self.screening.on:
            passed = len(self.screening.parked) + self.to_trainer.qsize() + len(self._handoff)
            if passed >= self.cfg.learner.prompts_per_step * max(self.cfg.loss.max_lag, 1):
                return False
        return self.ledger.in_flight_count() < self._window()

    def _next_item(self) -> tuple[str, str, bool]:
        """(item id, prompt id, new): a waiting in-flight item first, else the next prompt."""
        if self.retry:
            item_id = self.retry.popleft()
            return item_id, item_id.rsplit("@", 1)[0], False
        prompt_id = self.order[self.cursor % len(self.order)]
        item_id = f"{prompt_id}@{self.cursor}"
        self.cursor += 1
        return item_id, prompt_id, True

    def _actors(self) -> list[Peer]:
        ready = [p for p in self.peers.values() if p.role == "actor" and not p.quarantined and p.credit > 0 and p.version >= 0]
        return sorted(ready, key=lambda p: -p.credit)

    async def pump(self) -> None:
        """Send whatever can be sent: eval chunks, training work, verify jobs. The dispatches
        are one ledger transaction (or join the caller's), the messages leave after it."""
        with self.ep.hold(), self.ledger.batch():
            await self._pump()

    async def _pump(self) -> None:
        a = self.cfg.actor
        sampling = {"temperature": a.temperature, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens}
        hidden_k = HIDDEN_K if self.cfg.credit.method == "hidden" else None  # summaries only for `hidden`
        k = self.cfg.learner.eval_samples  # 1 = greedy
        eval_sampling = sampling if k > 1 else {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": a.max_new_tokens}
        while self.eval is not None and self.eval["chunks"] and self._actors():
            peer = self._actors()[0]
            chunk = self.eval["chunks"].popleft()
            prompts = [_wire_prompt(r) for r in chunk]
            await self.ep.send(peer.identity, "work", work_id=f"eval-{self.eval['version']}-{chunk[0]['id']}",
                               policy_version=self.version, prompts=prompts, group_size=k, sampling=eval_sampling,
                               eval=True)
            peer.credit -= 1
        # re-sends first: they are in flight already, so a full window never holds them back (a
        # resumed run, or one whose actors all died, has nothing in flight but them)
        cursor = self.cursor
        try:
            await self._pump_work(sampling, hidden_k)
        finally:
            if self.cursor != cursor:  # the new rows and the cursor past them: one transaction (pump's)
                self.ledger.set_meta("cursor", str(self.cursor))
        await self._pump_verifiers()

    async def _pump_work(self, sampling: dict, hidden_k: int | None) -> None:
        while self.training_open and (self.retry or self._window_open()) and (actors := self._actors()):
            peer = actors[0]
            item_id, prompt_id, new = self._next_item()
            if new:
                self.ledger.dispatch(item_id, prompt_id, peer.name, self.cfg.hub.work_lease_s, self.version)
            elif self.ledger.state(item_id) == "dispatched" or item_id in self.screening.parked:
                self.ledger.redispatch(item_id, peer.name, self.cfg.hub.work_lease_s, self.version)
            else:
                continue  # a late copy moved it on while it waited: nothing to re-send
            row = self.rows[prompt_id]
            work_id, group_size = self.screening.work(item_id)
            await self.ep.send(peer.identity, "work", work_id=work_id, policy_version=self.version,
                               prompts=[_wire_prompt(row)], group_size=group_size,
                               sampling=sampling, eval=False, hidden_k=hidden_k,
                               urgent=self.screening.is_continuation(work_id))
            peer.credit -= 1

    async def _pump_verifiers(self) -> None:
        while self.verify_queue:
            verifiers = [p for p in self.peers.values() if p.role == "verifier" and p.credit > 0]
            if not verifiers:
                return
            peer = max(verifiers, key=lambda p: p.credit)
            job_id = self.verify_queue.popleft()
            if job_id.startswith("eval-"):
                pid = job_id.split("-", 2)[2]
                row = self.eval["rows"].get(pid) if self.eval else None
                if row is None or pid in self.eval["rewards"]:
                    continue
                completions = self.eval["texts"][pid]
            else:
                group = self.pending.get(job_id)
                if group is None:
                    continue
                row = self.rows[group.prompt_id]
                completions = [s["text"] for s in group.samples]
                self.ledger.assign_verifier(job_id, peer.name, self.cfg.hub.verify_lease_s)
            await self.ep.send(peer.identity, "verify_job", job_id=job_id, task=self.cfg.task.reward or self.cfg.task.name,
                               prompt=row["prompt"], meta=row["meta"], completions=completions)
            peer.credit -= 1

    # --- leases and liveness -------------------------------------------------------
    def _release(self, peer: Peer, reason: str) -> None:
        """Put everything a gone or quarantined peer held back into the queues."""
        for item_id, prompt_id, state in self.ledger.held_by(peer.name):
            self._requeue(item_id, state)
        if self.eval is not None and peer.role == "actor":
            self.eval["chunks"].extend(self._missing_eval_chunks())
        log.info("released %s (%s)", peer.name, reason)

    def _requeue(self, item_id: str, state: str) -> None:
        if state == "dispatched":
            if item_id not in self.retry:
                self.retry.append(item_id)
            self.ledger.park(item_id)
        elif item_id in self.pending and item_id not in self.verify_queue:
            self.verify_queue.append(item_id)
        M.REDISPATCHED.inc()

    def _missing_eval_chunks(self) -> list[list[dict]]:
        missing = [r for r in self.heldout if r["id"] not in self.eval["texts"]]
        n = max(1, EVAL_CHUNK // self.cfg.learner.eval_samples)
        return [missing[i:i + n] for i in range(0, len(missing), n)]

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            with self.ep.hold(), self.ledger.batch():  # one transaction per sweep, messages after it
                await self._sweep()

    async def _sweep(self) -> None:
        """Drop gone or silent peers (their work back in line), heartbeat quiet ones, re-queue
        expired leases, retry a stuck evaluation, refresh the gauges, pump."""
        now = time.monotonic()
        for peer in list(self.peers.values()):
            if peer.identity in self.ep.unreachable:
                self.ep.unreachable.discard(peer.identity)
                log.warning("peer %s disconnected: dropping it", peer.name)
                del self.peers[peer.identity]
                self._release(peer, "disconnected")
            elif now - peer.last_seen > self.cfg.hub.peer_timeout_s:
                log.warning("peer %s silent for %.1fs: dropping it", peer.name, now - peer.last_seen)
                del self.peers[peer.identity]
                self._release(peer, "silent")
            elif now - self.ep.last_sent.get(peer.identity, 0.0) > self.cfg.hub.heartbeat_s:
                await self.ep.send(peer.identity, "heartbeat")
        for item_id, _, state in self.ledger.expired():
            self._requeue(item_id, state)
        self._retry_stuck_eval()
        M.update_ledger(self.ledger.counts())
        self._update_peer_metrics()
        await self.pump()

    def _retry_stuck_eval(self) -> None:
        """An evaluation that made no progress for a lease re-sends what is missing."""
        ev = self.eval
        if ev is None or time.monotonic() - ev["progress"] < self.cfg.hub.verify_lease_s:
            return
        ev["progress"] = time.monotonic()
        ev["chunks"].extend(self._missing_eval_chunks())
        for pid in ev["texts"]:
            if pid not in ev["rewards"]:
                self.verify_queue.append(f"eval-{ev['version']}-{pid}")

    def _update_peer_metrics(self) -> None:
        for role in ("actor", "verifier"):
            M.PEERS.labels(role).set(sum(1 for p in self.peers.values() if p.role == role and not p.quarantined))

    # --- called by the trainer (through the event loop) ----------------------------
    async def publish(self, info: dict, canary: float) -> None:
        """Announce a new weights version to every actor."""
        self.version = info["version"]
        self.expected[info["version"]] = (info["digest"], canary)
        self.weights = {"version": info["version"], "folder": info["folder"], "manifest_sha256": info["manifest_sha256"]}
        self.weights_root = Path(info["folder"]).parent
        for peer in self.peers.values():
            if peer.role == "actor" and not peer.quarantined:
                await self.ep.send(peer.identity, "weights_published", **self.weights)
        await self.pump()

    def mark_trained(self, item_ids: list[str], dropped: list[tuple[str, str]], version: int) -> None:
        self.ledger.trained(item_ids, version)
        for item_id, reason in dropped:
            self.ledger.drop(item_id, reason)
        M.update_ledger(self.ledger.totals())  # kept in memory: counts() scans the table

    def stop_training(self) -> None:
        self.training_open = False

    async def evaluate(self, timeout_s: float = 1800.0) -> tuple[float, dict[str, list[float]]]:
        """Held-out accuracy of the current version (mean over prompts of each prompt's mean
        reward) and the rewards per prompt id, through actors and verifiers."""
        rows = self.heldout
        self.eval = {"version": self.version, "rows": {r["id"]: r for r in rows}, "texts": {}, "rewards": {},
                     "done": asyncio.Event(), "chunks": collections.deque(), "progress": time.monotonic()}
        self.eval["chunks"].extend(self._missing_eval_chunks())
        await self.pump()
        await asyncio.wait_for(self.eval["done"].wait(), timeout_s)
        rewards = self.eval["rewards"]
        acc = float(np.mean([np.mean(r) for r in rewards.values()]))
        self.eval = None
        M.HELDOUT.set(acc)
        return (acc if math.isfinite(acc) else 0.0), rewards
