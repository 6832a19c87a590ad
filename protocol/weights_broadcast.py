"""Weights over torch.distributed: the learner broadcasts each version to actors in its process group (DESIGN §12).

The third way weights reach actors, next to file snapshots (the default) and the wire
fetch: like prime-rl, verl and AReaL between trainer and inference engines, the learner
(rank 0) and a fixed set of actors (ranks 1..W-1) form one torch.distributed group (gloo
on CPU, NCCL on GPUs) and every new version is broadcast from rank 0.

What it does:
  * `layout(named_tensors, dtype)`: the wire layout both sides derive from their own model:
    the canonical tensors (one per storage, so tied embeddings count once) in sorted name
    order, each as (name, dtype, shape, byte offset) in one flat byte buffer, and a 64-bit
    layout id (sha256 of that description).
  * `pack` / `unpack`: model tensors <-> the flat uint8 buffer (cast to / from `dtype`).
  * `Sender` (rank 0) hosts the TCPStore, joins the group in a background thread and
    broadcasts the newest version offered to it (an older one still waiting is skipped):
    a header [version, total bytes, layout id], then the buffer in BUCKET_BYTES slices.
  * `Receiver` (rank r) joins, then loops in a background thread: receive a header and the
    buffer into its own staging buffer (the live model keeps generating meanwhile) and hand
    (version, buffer) to the actor, which `unpack`s it between generate calls.
  A receiver whose layout id differs from the header's still receives every slice (so the
  collective never hangs) and reports the mismatch instead of loading.

What it does not do: prove anything. After `unpack` the actor computes its parameter
digest and canary and answers `weights_loaded` exactly as after a file load, and the
learner checks both. No membership changes: the group is fixed at start; a rank that
leaves makes the next broadcast fail after `timeout_s` on every side, the sender stops
broadcasting and receivers go back to the file path.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import queue
import threading
from collections.abc import Iterable

import torch
import torch.distributed as dist

log = logging.getLogger("scca.broadcast")

BUCKET_BYTES = 64 * 1024 * 1024  # bytes per broadcast call
HEADER_LEN = 3  # int64 [version, total bytes, layout id]
STOP = -1  # header version that ends a receiver's loop


def backend_for(device: str) -> str:
    """nccl for CUDA tensors, gloo otherwise."""
    return "nccl" if device.startswith("cuda") else "gloo"


def canonical(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One entry per storage (the first name in iteration order), so tied tensors count once."""
    seen, out = set(), {}
    for name, t in named_tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def layout(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> tuple[list, int, int]:
    """([(name, dtype, shape, offset)], total bytes, layout id) of the flat buffer.

    Floating tensors travel in `dtype` (None: as held); others as held. Offsets are
    aligned to 8 bytes. The layout id is the first 8 bytes of sha256 over the entries."""
    entries, offset, h = [], 0, hashlib.sha256()
    for name, t in sorted(canonical(named_tensors).items()):
        dt = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        size = t.numel() * torch.empty((), dtype=dt).element_size()
        entries.append((name, dt, tuple(t.shape), offset))
        h.update(f"{name}\0{dt}\0{tuple(t.shape)}\0".encode())
        offset += (size + 7) // 8 * 8
    return entries, offset, int.from_bytes(h.digest()[:8], "little", signed=True)


def pack(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None,
         out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """The flat uint8 buffer [total] of the tensors (reusing `out` when it fits) and the layout id."""
    tensors = canonical(named_tensors)
    entries, total, lid = layout(tensors.items(), dtype)
    device = next(iter(tensors.values())).device
    buf = out if out is not None and out.numel() == total else torch.empty(total, dtype=torch.uint8, device=device)
    with torch.no_grad():
        for name, dt, shape, off in entries:
            src = tensors[name].detach().to(dt).contiguous().reshape(-1)
            buf[off:off + src.numel() * src.element_size()].copy_(src.view(torch.uint8))
    return buf, lid


def unpack(buf: torch.Tensor, named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> None:
    """Copy the buffer's values into the receiver's own tensors (cast to their dtype)."""
    tensors = canonical(named_tensors)
    entries, total, _ = layout(tensors.items(), dtype)
    if buf.numel() != total:
        raise ValueError(f"broadcast buffer has {buf.numel()} bytes, this model's layout needs {total}")
    with torch.no_grad():
        for name, dt, shape, off in entries:
            n = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
            src = buf[off:off + n].to(tensors[name].device).view(dt).reshape(shape)
            tensors[name].copy_(src)


def _broadcast_buffer(buf: torch.Tensor) -> None:
    for lo in range(0, buf.numel(), BUCKET_BYTES):
        dist.broadcast(buf[lo:lo + BUCKET_BYTES], src=0)


def _join(store, rank: int, world_size: int, backend: str, timeout_s: float) -> None:
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


class Sender:
    """Rank 0 (the learner): hosts the store, joins in the background, broadcasts the newest version."""

    def __init__(self, host: str, port: int, world_size: int, backend: str = "gloo", timeout_s: float = 300.0):
        if world_size < 2:
            raise ValueError(f"a broadcast group needs the learner and at least one actor, got world_size {world_size}")
        self.store = dist.TCPStore(host, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                                   wait_for_workers=False)
        self.port, self.world_size, self.backend, self.timeout_s = self.store.port, world_size, backend, timeout_s
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.sent: list[int] = []  # versions broadcast so far
        self._pending: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._run, name="broadcast-send", daemon=True)
        self.thread.start()

    def offer(self, version: int, buf: torch.Tensor, layout_id: int) -> None:
        """Queue a packed version; one still waiting is replaced (receivers want the newest)."""
        if self.failed is not None:
            return
        try:
            self._pending.get_nowait()
        except queue.Empty:
            pass
        self._pending.put((version, buf, layout_id))

    def offer_model(self, version: int, named_tensors, dtype: torch.dtype | None) -> None:
        """Pack the model into a fresh buffer (a copy, so training may go on while it is sent) and offer it."""
        buf, lid = pack(named_tensors, dtype)
        self.offer(version, buf, lid)

    def _run(self) -> None:
        try:
            _join(self.store, 0, self.world_size, self.backend, self.timeout_s)
            self.ready.set()
            log.info("broadcast group of %d ranks formed (%s)", self.world_size, self.backend)
            while True:
                version, buf, lid = self._pending.get()
                header = torch.tensor([version, buf.numel(), lid], dtype=torch.int64, device=buf.device)
                dist.broadcast(header, src=0)
                if version == STOP:
                    return
                _broadcast_buffer(buf)
                self.sent.append(version)
        except BaseException as exc:  # fault policy: stop broadcasting; actors fall back to files
            self.failed = exc
            log.error("weights broadcast stopped: %s", exc)

    def close(self) -> None:
        """Tell receivers to stop (when the group is up) and leave the group."""
        if self.ready.is_set() and self.failed is None and self.thread.is_alive():
            self.offer(STOP, torch.empty(0, dtype=torch.uint8), 0)
            self.thread.join(self.timeout_s)
        if dist.is_initialized():
            dist.destroy_process_group()


class Receiver:
    """Rank r >= 1 (an actor): joins, then receives every broadcast into a staging buffer."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, named_tensors, dtype: torch.dtype | None,
                 backend: str = "gloo", timeout_s: float = 300.0, device: str = "cpu", notify=None):
        if not 1 <= rank < world_size:
            raise ValueError(f"receiver rank must be in 1..{world_size - 1}, got {rank}")
        _, self.total, self.layout_id = layout(named_tensors, dtype)
        self.store = dist.TCPStore(host, port, world_size, False, datetime.timedelta(seconds=timeout_s))
        self.rank, self.world_size, self.backend, self.timeout_s, self.device = rank, world_size, backend, timeout_s, device
        self.received: queue.Queue = queue.Queue()  # (version, uint8 buffer) or (version, ValueError)
        self.notify = notify  # called (from this receiver's thread) after each version
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="broadcast-recv", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        try:
            _join(self.store, self.rank, self.world_size, self.backend, self.timeout_s)
            while True:
                header = torch.zeros(HEADER_LEN, dtype=torch.int64, device=self.device)
                dist.broadcast(header, src=0)
                version, total, lid = (int(x) for x in header.tolist())
                if version == STOP:
                    return
                buf = torch.empty(total, dtype=torch.uint8, device=self.device)
                _broadcast_buffer(buf)  # received in full even on a mismatch, so the group never hangs
                if lid != self.layout_id or total != self.total:
                    self.received.put((version, ValueError(
                        f"broadcast v{version} has layout {lid:x} ({total} bytes); this model needs "
                        f"{self.layout_id:x} ({self.total} bytes)")))
                else:
                    self.received.put((version, buf))
                if self.notify is not None:
                    self.notify()
        except BaseException as exc:  # fault policy: the actor goes back to file snapshots
            self.failed = exc
            log.error("weights broadcast receiver stopped: %s", exc)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
