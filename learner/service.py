"""The learner service: one process = hub (asyncio, main thread) + trainer (thread) (DESIGN §1).

What it does, top to bottom: load the model (bootstrap or user folder, or the checkpoint
when resuming; fp32 master weights, snapshots in the folder's dtype) -> load and render
the prompts (learner/prompts.py; `prompt_format.json` records how) -> open the ledger ->
serve /metrics -> bind the hub -> publish the starting weights (a resumed run above every
version already on disk) -> start the trainer and the watch (progress lines, stall
detection) -> serve until the budget is spent or a stop is asked -> write `summary.json`
with the stop reason -> tell the peers when the run is over. It writes `learner.json`
(bound address, metrics port) once peers can connect.

How it ends (learner/stop.py): budget spent -> exit 0, `run_over` to peers; SIGINT or
SIGTERM -> the trainer checkpoints the step it reached, exit 130 / 143, no `run_over`
(peers keep reconnecting for a resume); a stall bound -> checkpoint, exit 3, `run_over`;
an error in the trainer or the hub -> exit 1, the one-line reason in `summary.json`.

What it does not do: it starts no other process (the launcher or the user does) and it
never imports actors or verifiers: they are reached only over the wire.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import torch
from prometheus_client import start_http_server
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner import stop as S
from learner.checkpoint import load_checkpoint
from learner.hub import Hub
from learner.ledger import Ledger
from learner.prompts import format_record, load_prompts
from learner.snapshots import resume_version
from learner.stall import StallMonitor, WatchedInbox
from learner.trainer import Trainer
from learner.watch import Watch, flush_sync_events
from protocol.weights import (
    WeightsError,
    canary_logprob,
    folder_dtype,
    publish_snapshot,
    saved_precision,
    verify_snapshot,
)

log = logging.getLogger("scca.learner")

RUN_OVER_LINGER_MS = 2000  # how long the final run_over messages get to leave the socket


def model_folder(cfg) -> Path:
    return Path(cfg.model.folder or cfg.model.bootstrap_dir)


def learner_device(cfg) -> torch.device:
    want = cfg.learner.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def load_policy(cfg, run_dir: Path, resume: bool):
    folder = run_dir / "checkpoint" if resume else model_folder(cfg)
    if resume and not (folder / "state.json").exists():
        raise FileNotFoundError(f"no checkpoint at {folder}: this run stopped before its first checkpoint "
                                f"([learner] checkpoint_every = {cfg.learner.checkpoint_every}); start it again without --resume")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no model at {folder}: run `scca bootstrap` or set [model] folder")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    device = learner_device(cfg)
    if device.type == "cuda":  # full fp32 matmuls: the canary must match the actors' within 1e-3
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model.to(device)  # before AdamW, so its state lives on the same device
    model.eval()
    lc = cfg.learner
    opt = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay)
    state = {"step": 0, "version": 0, "samples_trained": 0, "heldout_before": None, "wall_before": 0.0,
             "save_dtype": str(folder_dtype(folder)).removeprefix("torch.")}  # snapshots keep the folder's dtype
    if resume:
        state.update(load_checkpoint(folder, opt))
        state["wall_before"] = state.get("wall_seconds", state.get("wall_before", 0.0))
    return model, tok, opt, state


def snapshot_dtype(state: dict) -> torch.dtype:
    return getattr(torch, state.get("save_dtype", "float32"))


def publish_start(run_dir: Path, version: int, model, tok, keep: int, dtype: torch.dtype) -> dict:
    """Reuse an intact snapshot of this version (resume), else write one."""
    folder = run_dir / "weights" / f"v{version:06d}"
    if folder.exists():
        try:
            manifest = verify_snapshot(folder)
            sha = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
            return {"version": version, "folder": str(folder.resolve()), "manifest_sha256": sha, "digest": manifest["param_digest"]}
        except WeightsError as exc:
            log.warning("snapshot %s unusable (%s): rewriting it", folder, exc)
            shutil.rmtree(folder)
    return publish_snapshot(run_dir / "weights", version, model, tok, keep=keep, dtype=dtype)


def start_broadcast(cfg, hub: Hub, model, dtype: torch.dtype):
    """The weights broadcast group's rank 0 (joins in the background), announced in `welcome`; None when off."""
    world = cfg.learner.broadcast_world_size
    if world < 2:
        return None
    from protocol.weights_broadcast import Sender, backend_for

    device = str(next(model.parameters()).device)
    host = hub.ep.address.split("://", 1)[1].rsplit(":", 1)[0]
    sender = Sender(host, cfg.learner.broadcast_port, world, backend_for(device))
    hub.broadcast = {"port": sender.port, "world_size": world, "backend": sender.backend,
                     "dtype": str(dtype).removeprefix("torch.")}  # the snapshots' dtype: what is sent
    log.info("weights broadcast group: %d ranks on port %d (%s)", world, sender.port, sender.backend)
    return sender


def write_summary(run_dir: Path, state: dict, hub: Hub, reason: S.StopReason, trainer: Trainer) -> dict:
    counts = hub.ledger.counts()
    summary = {
        "heldout_accuracy_before": state.get("heldout_before"),
        "heldout_accuracy_after": state.get("heldout_after"),
        "samples_trained": state["samples_trained"],
        "samples_generated": hub.samples_generated,
        "steps": state["step"],
        "wall_seconds": state.get("wall_seconds"),
        "ledger": {k: counts[k] for k in ("dispatched", "trained", "dropped", "in_flight")},
        "dropped_reasons": hub.ledger.dropped_reasons(),
        "weights_loaded_ok": hub.digest_ok,
        "weights_loaded_mismatched": hub.digest_bad,
        "bad_messages": hub.ep.bad_messages,
        "prompts_dropped_too_long": state.get("prompts_dropped_too_long"),
        "completed": state.get("heldout_after") is not None,
        "stop_reason": reason.kind, "stop_message": reason.message, "exit_code": reason.exit_code,
        "interrupted": reason.kind == "interrupted",
        "unwanted_messages": dict(hub.unwanted), "dropped_sends": hub.ep.dropped_sends,
        "weights_refused": hub.weights_refused, "publish_failures": trainer.publisher.failures,
        "ledger_lock_waits": hub.ledger.db.lock_waits, "ledger_lock_wait_max_s": round(hub.ledger.db.lock_wait_max_s, 2),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def open_ledger(run_dir: Path, state: dict, resume: bool) -> tuple[Ledger, list[str]]:
    """The run's ledger and, on resume, the items to re-dispatch: rows past the checkpoint
    rewound, and `state["version"]` moved to the version the checkpoint is published as."""
    ledger = Ledger(run_dir / "ledger.sqlite")
    if not resume:
        return ledger, []
    rewound = ledger.rewind(state["version"])
    parked = ledger.resume()
    version = resume_version(run_dir / "weights", state["version"])
    log.info("resuming at step %d (checkpoint v%d, published as v%d): %d rows rewound, %d re-dispatched",
             state["step"], state["version"], version, rewound, len(parked))
    state["version"] = version
    return ledger, parked


async def serve(cfg, run_dir: Path, resume: bool) -> dict:
    torch.set_num_threads(cfg.learner.threads)
    torch.manual_seed(cfg.learner.seed)
    model, tok, opt, state = load_policy(cfg, run_dir, resume)
    source = run_dir / "checkpoint" if resume else model_folder(cfg)  # config + tokenizer + generation config
    prompts = load_prompts(cfg, tok, source)
    state["prompts_dropped_too_long"] = prompts.dropped
    (run_dir / "prompt_format.json").write_text(
        json.dumps(format_record(prompts, tok, source, state["save_dtype"]), indent=2))
    train_rows, heldout_rows = prompts.train, prompts.heldout
    ledger, parked = open_ledger(run_dir, state, resume)
    metrics_server, _ = start_http_server(cfg.hub.metrics_port, addr=cfg.hub.metrics_addr)
    monitor = StallMonitor(cfg.monitor)
    inbox = WatchedInbox(monitor, lambda: state["version"], cfg.loss.max_lag)
    hub = Hub(cfg, ledger, train_rows, heldout_rows, inbox, run_id=ledger.get_meta("run_id") or uuid.uuid4().hex[:12])
    ledger.set_meta("run_id", hub.run_id)
    hub.retry.extend(parked)
    dtype = snapshot_dtype(state)
    broadcaster = start_broadcast(cfg, hub, model, dtype)
    info = publish_start(run_dir, state["version"], model, tok, cfg.learner.keep_snapshots, dtype)
    with saved_precision(model, dtype):  # the values the snapshot holds
        canary = canary_logprob(model, tok)
    await hub.publish(info, canary)
    loop = asyncio.get_running_loop()
    trainer = Trainer(cfg, model, tok, opt, hub, loop, run_dir, inbox, state, prompts.renderer,
                      broadcaster=broadcaster)
    asked: list[S.StopReason] = []

    def request_stop(reason: S.StopReason) -> None:
        if not asked:
            asked.append(reason)
        trainer.stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda sig=sig: request_stop(S.interrupted(sig)))
    ready = {"address": hub.ep.address, "metrics_port": metrics_server.server_port, "pid": os.getpid(), "time": time.time()}
    (run_dir / "learner.json").write_text(json.dumps(ready))
    log.info("learner bound at %s, metrics on :%d", hub.ep.address, metrics_server.server_port)
    watch = Watch(cfg, run_dir, hub, trainer, monitor, request_stop)
    # Everything built so far (model, tokenizer, prompts, imported modules) lives for the whole
    # run: out of the cyclic GC's reach, a full collection no longer walks it (with torch loaded,
    # ~126 ms each, pausing the hub's event loop; measured in bench/transport.py).
    gc.freeze()
    trainer.start()
    tasks = [loop.create_task(hub.serve()), loop.create_task(watch.run())]
    reason = await run_until_done(trainer, tasks, request_stop, asked)
    if broadcaster is not None:
        broadcaster.close()
    log.info("run ended (%s): %s", reason.kind, reason.message)
    flush_sync_events(run_dir, hub, watch.synced)
    summary = write_summary(run_dir, state, hub, reason, trainer)
    if reason.run_over:
        await S.announce_run_over(hub, reason)
    hub.ep.close(RUN_OVER_LINGER_MS if reason.run_over else 0)
    ledger.close()
    metrics_server.shutdown()
    return summary


async def run_until_done(trainer: Trainer, tasks: list[asyncio.Task], request_stop, asked: list) -> S.StopReason:
    """Wait for the trainer; a hub or watch task that dies stops the run as failed."""
    done_wait = asyncio.get_running_loop().create_task(trainer.done.wait())
    finished, _ = await asyncio.wait([done_wait, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in finished:
        if task is not done_wait and not task.cancelled() and task.exception() is not None:
            log.error("%s failed: stopping the run", task.get_coro().__qualname__, exc_info=task.exception())
            request_stop(S.failed(task.exception()))
    await done_wait
    for task in tasks:
        task.cancel()
    if trainer.error is not None:
        return S.failed(trainer.error)
    if trainer.state.get("heldout_after") is not None:
        return S.completed(trainer.state["step"])
    if asked and asked[0].kind == "interrupted":
        return S.interrupted(asked[0].signum, trainer.state["step"])
    return asked[0] if asked else S.failed(RuntimeError("the trainer stopped without a reason"))


def main(cfg, run_dir: Path, resume: bool = False) -> dict:
    """Run the learner; the summary's `exit_code` is what the process should exit with."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s learner %(levelname)s %(message)s")
    run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(serve(cfg, run_dir, resume))
