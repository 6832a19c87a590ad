"""The learner's watch: progress lines, `progress.json`, stall warnings and stops.

What it does, once per `WATCH_S` on the hub's event loop: show the stall monitor what it
cannot see by itself (live peers, evaluation progress, groups waiting for the trainer,
failed publishes) -> log each new stall warning -> on a stop bound, ask the service to
stop the run (`request_stop(stalled(...))`) -> every `[monitor] progress_every_s` while no
step completes, log the progress line; rewrite `progress.json` (what `scca run` shows)
every tick -> append new `weights_loaded` checks to
`weights_sync.jsonl`, so they survive a learner that is killed. Besides, every metrics row
of a step reaches `on_row` (the trainer hands it over on the hub's loop): one progress line
per step, however fast steps come.

What it does not do: it never stops the trainer itself and never touches the ledger
beyond counting dropped rows (for each line, and at most every DROPS_REFRESH_S otherwise).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from learner.progress import format_line, progress_fields
from learner.stall import StallMonitor
from learner.stop import StopReason, stalled

log = logging.getLogger("scca.watch")

WATCH_S = 1.0  # period of the watch (progress.json is rewritten this often)
DROPS_REFRESH_S = 5.0  # ledger drop counts are re-read after each step, else at most this often


def live_peers(hub) -> tuple[int, int, int]:
    """(live actors, live verifiers, quarantined actors)."""
    peers = list(hub.peers.values())
    actors = sum(1 for p in peers if p.role == "actor" and not p.quarantined)
    verifiers = sum(1 for p in peers if p.role == "verifier")
    return actors, verifiers, sum(1 for p in peers if p.quarantined)


def flush_sync_events(run_dir: Path, hub, done: list[int]) -> None:
    """Append the `weights_loaded` checks not written yet (`done[0]` counts written ones)."""
    new = hub.sync_events[done[0]:]
    if not new:
        return
    with open(run_dir / "weights_sync.jsonl", "a") as f:
        for event in new:
            f.write(json.dumps(event) + "\n")
    done[0] += len(new)


def write_atomic(path: Path, text: str) -> None:
    """Replace `path`; progress output is best effort: a full disk only costs the file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)


class Watch:
    def __init__(self, cfg, run_dir: Path, hub, trainer, monitor: StallMonitor,
                 request_stop: Callable[[StopReason], None]):
        self.cfg, self.run_dir, self.hub, self.trainer, self.monitor = cfg, Path(run_dir), hub, trainer, monitor
        self.request_stop = request_stop
        trainer.on_row = self.on_row  # a progress line for every step, however fast they come
        self.synced = [0]
        self.t0 = time.monotonic()
        self.step0 = trainer.state["step"]
        self.last_line = 0.0
        self.heldout: list[float] = []
        self.eval_version = None
        self.stopped: str | None = None  # the stall condition that stopped the run
        self.dropped: dict[str, int] = {}
        self.dropped_at = -DROPS_REFRESH_S

    async def run(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            self.tick()

    def tick(self) -> None:
        self.observe()
        warnings, stop = self.monitor.check()
        for w in warnings:
            log.warning("stall warning (%s): %s", w.condition, w.message)
        if stop is not None and self.stopped is None:
            log.error("stopping the run, stalled (%s past %g): %s", stop.condition, stop.bound, stop.message)
            self.stopped = stop.condition
            self.request_stop(stalled(stop.message))
        now = time.monotonic()
        line_due = now - self.last_line >= self.cfg.monitor.progress_every_s  # no step for a while: say so anyway
        if line_due or now - self.dropped_at >= DROPS_REFRESH_S:
            self.dropped, self.dropped_at = self.hub.ledger.dropped_reasons(), now
        fields = self.fields(now)
        write_atomic(self.run_dir / "progress.json", json.dumps(fields))
        if line_due:
            self.last_line = now
            log.info("progress: %s", format_line(fields))
        flush_sync_events(self.run_dir, self.hub, self.synced)

    def on_row(self, row: dict) -> None:
        """The trainer's metrics row of a step (on the hub's loop): its progress line."""
        if "loss" not in row:
            return
        now = time.monotonic()
        self.dropped, self.dropped_at = self.hub.ledger.dropped_reasons(), now
        state = {**self.trainer.state, "step": row["step"], "samples_trained": row["samples_trained"]}
        fields = self.fields(now, state, row)
        write_atomic(self.run_dir / "progress.json", json.dumps(fields))
        self.last_line = now
        log.info("progress: %s", format_line(fields))

    def observe(self) -> None:
        actors, verifiers, quarantined = live_peers(self.hub)
        self.monitor.observe_peers(actors, verifiers, quarantined)
        if self.hub.eval is not None:
            self.monitor.observe_verified(self.hub.eval["progress"])
        if self.trainer.inbox.qsize() > 0:  # groups wait for a busy trainer: the pipeline works
            self.monitor.observe_verified()
        self.monitor.observe_publish(self.trainer.publisher.consecutive, self.trainer.publisher.last_error)
        state = self.trainer.state
        if state.get("last_eval_version") is not None and state["last_eval_version"] != self.eval_version:
            self.eval_version = state["last_eval_version"]
            self.heldout.append(state["last_eval"])

    def status(self, actors: int, verifiers: int) -> str:
        if self.stopped:
            return f"stalled: {self.stopped}"
        if self.monitor.warned:
            return "warning: " + ", ".join(sorted(self.monitor.warned))
        if self.hub.eval is not None:
            return "evaluating"
        if not actors or not verifiers:
            return "waiting for " + ("actors" if not actors else "verifiers")
        return "training"

    def fields(self, now: float, state: dict | None = None, row: dict | None = None) -> dict:
        state = state or self.trainer.state
        actors, verifiers, _ = live_peers(self.hub)
        return progress_fields(state, row or self.trainer.last_row, self.cfg.learner.max_steps, self.heldout,
                               self.dropped, (actors, verifiers), now - self.t0, state["step"] - self.step0,
                               self.status(actors, verifiers))
