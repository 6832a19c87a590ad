"""Remote weights: an actor without the learner's filesystem pulls a snapshot over the wire.

What it does: for a `weights_published` message, fetches `manifest.json` from the learner
in chunks (`weights_fetch` -> `weights_chunk`), checks its sha256 against the message,
then fetches every file the manifest lists into a temp folder next to the actor's own
weights folder, writes READY, renames it into place and runs the normal
`verify_snapshot` (per-file sha256) before anything is loaded. Keeps the last
`KEEP_LOCAL` versions.

What it does not do: no parallel or resumable downloads (a failed fetch starts over at
the next `weights_published`), no compression, no peer-to-peer distribution.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
from pathlib import Path

from protocol.weights import MANIFEST, READY, WeightsError, verify_snapshot

CHUNK_BYTES = 4 * 1024 * 1024  # asked per weights_fetch (the wire allows up to 8 MiB)
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

    async def _file(self, version: int, name: str, dest: Path) -> bytes | None:
        """Fetch one file into dest; return its bytes when it is the manifest."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        offset, size = 0, None
        h = hashlib.sha256()
        with open(dest, "wb") as f:
            while size is None or offset < size:
                await self.send("weights_fetch", version=version, file=name, offset=offset, length=CHUNK_BYTES)
                msg = await asyncio.wait_for(self.chunks.get(), CHUNK_TIMEOUT_S)
                if msg["kind"] == "error":
                    raise WeightsError(f"learner cannot serve {name} of v{version}: {msg['message']}")
                if (msg["version"], msg["file"], msg["offset"]) != (version, name, offset):
                    raise WeightsError(f"unexpected chunk {msg['file']}@{msg['offset']} v{msg['version']} "
                                       f"while fetching {name}@{offset} v{version}")
                size = msg["size"]
                if not msg["data"] and offset < size:
                    raise WeightsError(f"empty chunk for {name} at {offset} of {size}")
                f.write(msg["data"])
                h.update(msg["data"])
                offset += len(msg["data"])
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
            raw = await self._file(version, MANIFEST, tmp / MANIFEST)
            if hashlib.sha256(raw).hexdigest() != manifest_sha256:
                raise WeightsError(f"fetched {MANIFEST} of v{version} does not match the published sha256")
            for name in sorted(json.loads(raw)["files"]):
                await self._file(version, _safe_name(name), tmp / name)
            (tmp / READY).write_bytes(b"")
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        verify_snapshot(final, manifest_sha256)
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        versions = sorted(p for p in self.root.glob("v[0-9]*") if p.is_dir())
        for old in versions[:-KEEP_LOCAL]:
            if old != keep:
                shutil.rmtree(old, ignore_errors=True)
