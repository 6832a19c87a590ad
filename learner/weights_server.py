"""Serving snapshot files in chunks to actors that do not share the learner's filesystem.

What it does: `read_chunk(root, version, name, offset, length)` returns the bytes of one
file of a READY snapshot and the file's size, or None when the version is not kept or the
name is not a file its manifest lists (so nothing outside the snapshot can be read). The
manifest is parsed once per snapshot (cached by path and modification time), not once per
chunk.

Zero-copy: the bytes are a read-only memoryview of the chunk's pages, memory-mapped with
MAP_POPULATE (one system call maps the page-cache pages, no copy in this process); sent
with `copy=False`, the socket reads them straight from the page cache. The mapping lives
as long as the memoryview (until the socket has sent it). Snapshot files are immutable
once READY (a republished version is renamed away and unlinked, never truncated), so a
mapping never outlives its bytes.

What it does not do: no sockets (the hub sends the chunk), no checksums (the actor checks
every file against the manifest it fetched first).
"""

from __future__ import annotations

import functools
import json
import mmap
import os
from pathlib import Path

from protocol.weights import MANIFEST, READY


@functools.lru_cache(maxsize=16)
def _listed(manifest: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(json.loads(manifest.read_text())["files"]) | {MANIFEST}


def _map(fd: int, offset: int, n: int) -> memoryview:
    """n bytes of the open file from offset, memory-mapped read-only and pre-faulted."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a granule
    m = mmap.mmap(fd, offset - start + n, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ,
                  offset=start)
    return memoryview(m)[offset - start:]


def read_chunk(root: Path, version: int, name: str, offset: int, length: int) -> tuple[memoryview | bytes, int] | None:
    folder = Path(root) / f"v{version:06d}"
    manifest = folder / MANIFEST
    try:
        if not (folder / READY).exists() or name not in _listed(manifest, manifest.stat().st_mtime_ns):
            return None
        fd = os.open(folder / name, os.O_RDONLY)
    except FileNotFoundError:  # pruned between the check and the open
        return None
    try:
        size = os.fstat(fd).st_size
        n = max(0, min(length, size - offset))
        return (_map(fd, offset, n) if n else b""), size
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor
