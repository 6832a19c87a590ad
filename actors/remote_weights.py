"""Remote weights: an actor without the learner's filesystem pulls a snapshot over the wire.

What it does: for a `weights_published` message, fetches `manifest.json` from the learner
in chunks (`weights_fetch` -> `weights_chunk`), checks its sha256 against the message,
then fetches every file the manifest lists into a temp folder next to the actor's own
weights folder, writes READY and renames it into place. Keeps the last `KEEP_LOCAL` versions.

Speed: each `weights_fetch` asks for a range of RANGE_BYTES, which the learner answers as
consecutive chunks of at most MAX_WEIGHTS_CHUNK bytes whose bytes travel as raw ZMQ frames
(sent zero-copy from a memory map of the file, received zero-copy, never packed into
msgpack); up to WINDOW ranges are requested ahead of what has arrived, so the learner's
reads overlap this side's receiving; each chunk is hashed (BLAKE3, in order) and written
by two worker threads while the next ones arrive (both release the GIL). Profiled on a
0.5B bf16 snapshot (bench/weights_sync.py), the write thread is the bound: writing into
the page cache, not the socket or the hash. A file whose streamed BLAKE3 differs from the
manifest fails the fetch at once, so no second hashing pass is needed here; the engine
verifies the folder again when it loads it (`load_verified`, the same check the
shared-filesystem path makes). The manifest itself is checked against the sha256 the
`weights_published` message carries, and must be of format `protocol.weights.FORMAT`.

What it does not do: no resumable downloads (a failed fetch starts over at the next
`weights_published`), no compression, no peer-to-peer distribution.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import secrets
import shutil
from pathlib import Path

from protocol.weights import FORMAT, MANIFEST, READY, WeightsError, verify_snapshot
from protocol.weights_hash import hasher

RANGE_BYTES = 64 * 1024 * 1024  # asked per weights_fetch; answered as chunks of <= MAX_WEIGHTS_CHUNK
WINDOW = 2  # ranges in flight at once
SINKS_AHEAD = 8  # chunks being hashed/written while more are received (bounds the memory they hold)
CHUNK_TIMEOUT_S = 30.0  # a chunk not answered within this fails the fetch
KEEP_LOCAL = 2  # fetched versions kept on the actor's disk


def _safe_name(name: str) -> str:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise WeightsError(f"manifest lists an unsafe file name: {name!r}")
    return name


class RemoteWeights:
    """Pulls snapshots through `send` (a coroutine sending a message) and `chunks` (inbox)."""

    def __init__(self, root: Path, send):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.send = send
        self.chunks: asyncio.Queue = asyncio.Queue()
        self.bytes_fetched = 0
        # one thread hashes, one writes: both release the GIL, so they overlap each other and the receiving
        self.hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fetch-hash")
        self.writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fetch-write")

    def route(self, msg: dict) -> bool:
        """Hand a fetch what is meant for it: a `weights_chunk`, or the learner's `error`
        `weights_unavailable` (fails the fetch now instead of at its timeout). True if taken."""
        if msg["kind"] == "weights_chunk" or (msg["kind"] == "error" and msg["code"] == "weights_unavailable"):
            self.chunks.put_nowait(msg)
            return True
        return False

    async def pump(self, recv) -> None:
        """Route every message `recv()` returns, for an endpoint that only fetches (the
        benchmark's and the tests' actors; the actor service routes from its own dispatch)."""
        while True:
            self.route(await recv())

    async def _request(self, version: int, name: str, offset: int) -> None:
        await self.send("weights_fetch", version=version, file=name, offset=offset, length=RANGE_BYTES)

    async def _chunk(self, version: int, name: str, offset: int) -> dict:
        msg = await asyncio.wait_for(self.chunks.get(), CHUNK_TIMEOUT_S)
        if msg["kind"] == "error":
            raise WeightsError(f"learner cannot serve {name} of v{version}: {msg['message']}")
        if (msg["version"], msg["file"], msg["offset"]) != (version, name, offset):
            raise WeightsError(f"unexpected chunk {msg['file']}@{msg['offset']} v{msg['version']} "
                               f"while fetching {name}@{offset} v{version}")
        msg["data"] = msg["data"] if msg["data"] is not None else b""  # the raw frame (a memoryview)
        if not len(msg["data"]) and offset < msg["size"]:
            raise WeightsError(f"empty chunk for {name} at {offset} of {msg['size']}")
        return msg

    async def _file(self, version: int, name: str, dest: Path, check: tuple[str, str] | None) -> bytes | None:
        """Fetch one file into dest, keeping up to WINDOW ranges requested ahead of what has
        arrived; every chunk is hashed (in order) and written in two worker threads while
        the next ones arrive. `check`: ("sha256" for the manifest or "blake3" for a file
        it lists, expected hex). Returns the manifest's bytes."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256() if check and check[0] == "sha256" else hasher()
        await self._request(version, name, 0)
        msg = await self._chunk(version, name, 0)
        size, asked, offset = msg["size"], RANGE_BYTES, 0
        busy: collections.deque = collections.deque()  # (hash, write) futures of chunks being worked on
        with open(dest, "wb") as f:
            while True:
                while asked < size and asked - offset < WINDOW * RANGE_BYTES:
                    await self._request(version, name, asked)
                    asked += RANGE_BYTES
                busy.append((self.hasher.submit(h.update, msg["data"]), self.writer.submit(f.write, msg["data"])))
                offset += len(msg["data"])
                while len(busy) > SINKS_AHEAD or (offset >= size and busy):
                    for fut in busy.popleft():
                        await asyncio.wrap_future(fut)
                if offset >= size:
                    break
                msg = await self._chunk(version, name, offset)
        if check is not None and h.hexdigest() != check[1]:
            raise WeightsError(f"fetched {name} of v{version} does not match its {check[0]} in the "
                               f"{'message' if name == MANIFEST else 'manifest'}")
        self.bytes_fetched += offset
        return dest.read_bytes() if name == MANIFEST else None

    async def fetch(self, version: int, manifest_sha256: str) -> Path:
        final = self.root / f"v{version:06d}"
        if final.exists():
            try:
                verify_snapshot(final, manifest_sha256)
                return final
            except WeightsError:
                shutil.rmtree(final)
        while not self.chunks.empty():  # answers to an abandoned fetch
            self.chunks.get_nowait()
        tmp = self.root / f".fetch-v{version:06d}-{secrets.token_hex(4)}"
        try:
            raw = await self._file(version, MANIFEST, tmp / MANIFEST, ("sha256", manifest_sha256))
            manifest = json.loads(raw)
            if manifest.get("format") != FORMAT:
                raise WeightsError(f"v{version}: manifest format {manifest.get('format')!r}, this actor reads {FORMAT}")
            for name, digest in sorted(manifest["files"].items()):
                await self._file(version, _safe_name(name), tmp / name, ("blake3", digest))
            (tmp / READY).write_bytes(b"")
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune(keep=final)  # every file matched its streamed hash; the engine verifies again on load
        return final

    def _prune(self, keep: Path) -> None:
        versions = sorted(p for p in self.root.glob("v[0-9]*") if p.is_dir())
        for old in versions[:-KEEP_LOCAL]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
