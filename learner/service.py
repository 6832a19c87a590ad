"""The learner service: one process = hub (asyncio, main thread) + trainer (thread) (DESIGN §1).

What it does, top to bottom: load prompts -> load the model (bootstrap folder, or the
checkpoint when resuming) -> open the ledger -> serve /metrics -> bind the hub ->
publish the starting weights -> start the trainer -> serve until the budget is spent or a
stop is asked -> write `summary.json`. It writes `learner.json` (bound address, metrics
port) once peers can connect.

What it does not do: it starts no other process (the launcher or the user does) and it
never imports actors or verifiers: they are reached only over the wire.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import time
import uuid
from pathlib import Path

import torch
from prometheus_client import start_http_server
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.checkpoint import load_checkpoint
from learner.hub import Hub
from learner.ledger import Ledger
from learner.trainer import Trainer
from protocol.dataset import read_jsonl
from protocol.weights import WeightsError, canary_logprob, publish_snapshot, verify_snapshot

log = logging.getLogger("scca.learner")


def model_folder(cfg) -> Path:
    return Path(cfg.model.folder or cfg.model.bootstrap_dir)


def learner_device(cfg) -> torch.device:
    want = cfg.learner.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def load_policy(cfg, run_dir: Path, resume: bool):
    folder = run_dir / "checkpoint" if resume else model_folder(cfg)
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
    state = {"step": 0, "version": 0, "samples_trained": 0, "heldout_before": None, "wall_before": 0.0}
    if resume:
        state.update(load_checkpoint(folder, opt))
        state["wall_before"] = state.get("wall_seconds", state.get("wall_before", 0.0))
    return model, tok, opt, state


def publish_start(run_dir: Path, version: int, model, tok, keep: int) -> dict:
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
    return publish_snapshot(run_dir / "weights", version, model, tok, keep=keep)


def start_broadcast(cfg, hub: Hub, model):
    """The weights broadcast group's rank 0 (joins in the background), announced in `welcome`; None when off."""
    world = cfg.learner.broadcast_world_size
    if world < 2:
        return None
    from protocol.weights_broadcast import Sender, backend_for

    device = str(next(model.parameters()).device)
    host = hub.ep.address.split("://", 1)[1].rsplit(":", 1)[0]
    sender = Sender(host, cfg.learner.broadcast_port, world, backend_for(device))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    hub.broadcast = {"port": sender.port, "world_size": world, "backend": sender.backend, "dtype": dtype}
    log.info("weights broadcast group: %d ranks on port %d (%s)", world, sender.port, sender.backend)
    return sender


def write_summary(run_dir: Path, state: dict, hub: Hub) -> dict:
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
        "completed": state.get("heldout_after") is not None,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(run_dir / "weights_sync.jsonl", "a") as f:
        for event in hub.sync_events:
            f.write(json.dumps(event) + "\n")
    return summary


async def serve(cfg, run_dir: Path, resume: bool) -> dict:
    torch.set_num_threads(cfg.learner.threads)
    torch.manual_seed(cfg.learner.seed)
    train_rows, heldout_rows = read_jsonl(cfg.task.train_file), read_jsonl(cfg.task.heldout_file)
    model, tok, opt, state = load_policy(cfg, run_dir, resume)
    ledger = Ledger(run_dir / "ledger.sqlite")
    parked = []
    if resume:
        rewound = ledger.rewind(state["version"])
        parked = ledger.resume()
        log.info("resuming at step %d (v%d): %d rows rewound, %d re-dispatched", state["step"], state["version"], rewound, len(parked))
    metrics_server, _ = start_http_server(cfg.hub.metrics_port, addr=cfg.hub.metrics_addr)
    inbox: queue.Queue = queue.Queue()
    hub = Hub(cfg, ledger, train_rows, heldout_rows, inbox, run_id=ledger.get_meta("run_id") or uuid.uuid4().hex[:12])
    ledger.set_meta("run_id", hub.run_id)
    hub.retry.extend(parked)
    broadcaster = start_broadcast(cfg, hub, model)
    info = publish_start(run_dir, state["version"], model, tok, cfg.learner.keep_snapshots)
    await hub.publish(info, canary_logprob(model, tok))
    loop = asyncio.get_running_loop()
    trainer = Trainer(cfg, model, tok, opt, hub, loop, run_dir, inbox, state, broadcaster)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, trainer.stop_event.set)
    ready = {"address": hub.ep.address, "metrics_port": metrics_server.server_port, "pid": os.getpid(), "time": time.time()}
    (run_dir / "learner.json").write_text(json.dumps(ready))
    log.info("learner bound at %s, metrics on :%d", hub.ep.address, metrics_server.server_port)
    trainer.start()
    serving = loop.create_task(hub.serve())
    await trainer.done.wait()
    serving.cancel()
    if broadcaster is not None:
        broadcaster.close()
    summary = write_summary(run_dir, state, hub)
    hub.ep.close()
    ledger.close()
    metrics_server.shutdown()
    if trainer.error is not None:
        raise trainer.error
    return summary


def main(cfg, run_dir: Path, resume: bool = False) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s learner %(levelname)s %(message)s")
    run_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(serve(cfg, run_dir, resume))
