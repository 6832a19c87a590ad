"""The actor's side of the weights broadcast group (protocol/weights_broadcast.py).

What it does: once the engine holds its first weights (loaded from a snapshot folder as
usual), an actor with `[actor] broadcast_rank` r >= 1 joins the group the learner
announced in `welcome` (the store's host is the one the actor connected to). A background
thread then receives every broadcast version into a staging buffer while generation goes
on; `newest()` hands the work loop the latest one, which `apply` copies into the engine's
model between generate calls. The actor then proves what it holds exactly as after a file
load (`weights_loaded` with digest + canary).

What it does not do: vLLM engines (their weights live in vLLM's workers; they keep the
file path), or rejoin a broken group (after a failure the actor uses file snapshots again).
"""

from __future__ import annotations

import logging
import queue

import torch

from protocol.weights_broadcast import Receiver, unpack

log = logging.getLogger("scca.actor")


class BroadcastWeights:
    def __init__(self, address: str, info: dict, rank: int, engine, wake):
        """address: the learner's tcp:// address; info: the `welcome` message's `broadcast`;
        wake: called (from the receiving thread) when a version has arrived."""
        host = address.split("://", 1)[1].rsplit(":", 1)[0]
        self.dtype = getattr(torch, info["dtype"])
        self.rx = Receiver(host, info["port"], rank, info["world_size"], engine.model.state_dict().items(),
                           self.dtype, backend=info["backend"], device=str(engine.device), notify=wake)
        log.info("joining the weights broadcast group as rank %d of %d", rank, info["world_size"])

    @property
    def active(self) -> bool:
        """True while versions arrive this way (file snapshots are then not loaded)."""
        return self.rx.alive

    def newest(self) -> tuple[int, object] | None:
        """(version, buffer or error) of the newest version received since the last call; None if none."""
        got = None
        while True:
            try:
                got = self.rx.received.get_nowait()
            except queue.Empty:
                return got

    def apply(self, engine, version: int, buf: torch.Tensor) -> None:
        """Copy a received version into the engine's model (in place) and stamp it."""
        unpack(buf, engine.model.state_dict().items(), self.dtype)
        engine.version = version
