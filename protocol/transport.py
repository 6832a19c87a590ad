"""asyncio ZeroMQ endpoints with heartbeats on the data sockets (DESIGN §1, §2).

What it does:
* `RouterEndpoint` (learner side, binds): receives `(peer identity, message)`, one at a
  time (`recv`) or as a batch (`recv_batch`: waits for the first message, then takes what
  is already queued without waiting, up to a limit); a frame that fails decoding is
  answered with an `error` message, counted in `bad_messages`, and skipped — it never
  raises into the caller's loop. Sends never wait: a message for a peer whose queue is
  full (a peer that stopped reading) is dropped and counted in `dropped_sends`, so one
  stuck or hostile peer cannot block the learner's event loop. Inside `hold()` sends are
  queued and leave when the outermost `hold` exits without an exception (the hub holds
  its replies until the ledger transaction they depend on has committed); raw-frame
  attachments (weights chunks, no ledger state) are never held.
* Both sockets refuse frames over `MAX_MESSAGE_BYTES` inside ZeroMQ (`ZMQ_MAXMSGSIZE`:
  the sending peer is disconnected), so an over-size message is never even read.
* `DealerEndpoint` (actor / verifier side, connects): sends and receives validated
  messages; a background task sends `heartbeat` when nothing else was sent for
  `heartbeat_s`, and `silent_for()` tells how long the learner has been quiet so the
  service can reconnect.
Every message received goes through `protocol.messages.decode` (msgpack, no pickle); every
message sent is built by `messages.make` (validated once) and packed. A kind
listed in `messages.ATTACHMENTS` (weights_chunk) may carry one raw byte frame after the
message frame: sent zero-copy from the sender's buffer, received without a copy (the field
holds a memoryview of the frame), never packed into msgpack, bounded in size.

What it does not do: no retries of application messages (the learner's leases handle
lost work), no encryption or authentication (bind to loopback or a private network),
no ordering guarantees across reconnects.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from types import TracebackType

import zmq
import zmq.asyncio

from protocol import messages
from protocol.codec import MAX_MESSAGE_BYTES, ProtocolError, pack

LINGER_MS = 0  # closing never blocks on unsent messages
HWM = 10_000  # high-water mark per socket (messages)


def _socket(ctx: zmq.asyncio.Context, kind: int) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    return sock


class _Hold:
    """`RouterEndpoint.hold()`: nested holds join the outermost, which sends what was queued
    when it exits normally and discards it when it exits with an exception."""

    def __init__(self, ep: "RouterEndpoint"):
        self.ep = ep

    def __enter__(self) -> None:
        self.ep._hold_depth += 1

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        ep = self.ep
        ep._hold_depth -= 1
        if ep._hold_depth == 0:
            held, ep._held = ep._held, []
            if exc_type is None:
                for identity, payload in held:
                    ep._send_frames(identity, [identity, payload], copy=True)
        return False


class RouterEndpoint:
    """The learner's bound ROUTER socket."""

    def __init__(self, address: str, name: str = "learner"):
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = _socket(self.ctx, zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.bind(address)
        # the same socket without asyncio futures: non-blocking receives of what is already
        # queued and non-blocking sends (pyzmq's asyncio socket does the same internally)
        self._sync = zmq.Socket.shadow(self.sock.underlying)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.name = name
        self._seq = itertools.count()
        self.bad_messages = 0
        self.dropped_sends = 0  # messages dropped because the peer's queue was full
        self.last_sent: dict[bytes, float] = {}
        self.unreachable: set[bytes] = set()  # peers a send found disconnected
        self._hold_depth = 0
        self._held: list[tuple[bytes, bytes]] = []  # (identity, payload) queued inside hold()

    async def recv(self) -> tuple[bytes, dict]:
        """Next valid message; garbage is answered with `error` and skipped."""
        while True:
            item = self._decode(await self.sock.recv_multipart())
            if item is not None:
                return item

    async def recv_batch(self, limit: int) -> list[tuple[bytes, dict]]:
        """Wait for one message, then take up to `limit` - 1 more that are already queued
        (never waiting for them); the valid ones in arrival order (garbage is answered with
        `error` and skipped, so the list may be empty)."""
        got = [await self.sock.recv_multipart()]
        while len(got) < limit:
            try:
                got.append(self._sync.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
        return [item for item in map(self._decode, got) if item is not None]

    def _decode(self, frames: list[bytes]) -> tuple[bytes, dict] | None:
        if len(frames) != 2:
            self.bad_messages += 1
            if frames:
                self._reply_error(frames[0], "bad_frames", f"expected 1 payload frame, got {len(frames) - 1}")
            return None
        identity, payload = frames
        try:
            return identity, messages.decode(payload)
        except ProtocolError as exc:
            self.bad_messages += 1
            self._reply_error(identity, exc.code, str(exc))
            return None

    def _reply_error(self, identity: bytes, code: str, text: str) -> None:
        self._send(identity, "error", None, {"code": code, "message": text[:1000]})

    def hold(self) -> _Hold:
        """Queue sends made inside; they leave when the outermost hold exits normally."""
        return _Hold(self)

    async def send(self, identity: bytes, kind: str, attachment: bytes | None = None, **fields) -> bool:
        """Send to one peer without waiting (`attachment`: the raw frame of an ATTACHMENTS kind,
        sent zero-copy, never held). False when the message was dropped: the peer is gone
        (disconnected; its identity goes into `unreachable` for the owner's liveness sweep) or
        its queue is full (counted in `dropped_sends`; leases re-send real work, a weights
        fetch asks again). Inside `hold()`: queued, True."""
        return self._send(identity, kind, attachment, fields)

    def _send(self, identity: bytes, kind: str, attachment: bytes | None, fields: dict) -> bool:
        payload = pack(messages.make(kind, self.name, next(self._seq), **fields))  # make validates
        if attachment is not None:
            if kind not in messages.ATTACHMENTS or len(attachment) > messages.ATTACHMENTS[kind][1]:
                raise ValueError(f"{kind} cannot carry an attachment of {len(attachment)} bytes")
            return self._send_frames(identity, [identity, payload, attachment], copy=False)
        if self._hold_depth:
            self._held.append((identity, payload))
            return True
        return self._send_frames(identity, [identity, payload], copy=True)

    def _send_frames(self, identity: bytes, frames: list, copy: bool) -> bool:
        try:
            self._sync.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            self.dropped_sends += 1
            return False
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.unreachable.add(identity)
            return False
        self.last_sent[identity] = time.monotonic()
        return True

    def close(self, linger_ms: int = LINGER_MS) -> None:
        """Close; `linger_ms` > 0 gives queued messages (a final `run_over`) that long to leave."""
        self.sock.close(linger_ms)


def _with_attachment(msg: dict, rest: list) -> dict:
    """Put the raw frame after the message into its field (a memoryview, no copy)."""
    if not rest:
        return msg
    field, limit = messages.ATTACHMENTS.get(msg["kind"], (None, 0))
    if field is None or len(rest) != 1 or len(rest[0]) > limit:
        raise ProtocolError("bad_frames", f"{msg['kind']}: unexpected attachment of {len(rest)} frame(s)")
    msg[field] = rest[0].buffer
    return msg


class DealerEndpoint:
    """An actor's or verifier's DEALER socket to the learner, with heartbeats."""

    def __init__(self, address: str, name: str, heartbeat_s: float = 1.0):
        self.ctx = zmq.asyncio.Context.instance()
        self.address = address
        self.name = name
        self.heartbeat_s = heartbeat_s
        self._seq = itertools.count()
        self.sock = self._connect()
        self.last_sent = time.monotonic()
        self.last_recv = time.monotonic()
        self._hb_task: asyncio.Task | None = None
        self.bad_messages = 0

    def _connect(self) -> zmq.asyncio.Socket:
        sock = _socket(self.ctx, zmq.DEALER)
        sock.setsockopt_string(zmq.IDENTITY, self.name)
        sock.connect(self.address)
        return sock

    def reconnect(self) -> None:
        """Drop the socket and open a fresh one (after the learner went silent)."""
        self.sock.close(LINGER_MS)
        self.sock = self._connect()
        self.last_recv = time.monotonic()

    def start_heartbeats(self) -> None:
        self._hb_task = asyncio.get_running_loop().create_task(self._heartbeat_loop())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s / 2)
            if time.monotonic() - self.last_sent >= self.heartbeat_s:
                await self.send("heartbeat")

    async def send(self, kind: str, **fields) -> None:
        msg = messages.make(kind, self.name, next(self._seq), **fields)  # validates
        await self.sock.send(pack(msg))
        self.last_sent = time.monotonic()

    async def send_raw(self, payload: bytes) -> None:
        """Send bytes as they are (tests use it to send garbage)."""
        await self.sock.send(payload)

    async def recv(self, timeout: float | None = None) -> dict | None:
        """Next valid message, or None after `timeout` seconds. Garbage is counted and skipped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left is not None and not await self.sock.poll(left * 1000):
                return None
            frames = await self.sock.recv_multipart(copy=False)
            self.last_recv = time.monotonic()
            try:
                return _with_attachment(messages.decode(frames[0].bytes), frames[1:])
            except ProtocolError:
                self.bad_messages += 1

    def silent_for(self) -> float:
        return time.monotonic() - self.last_recv

    def close(self) -> None:
        if self._hb_task is not None:
            self._hb_task.cancel()
        self.sock.close(LINGER_MS)
