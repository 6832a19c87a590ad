"""Serving snapshot files in chunks to actors that do not share the learner's filesystem.

What it does: `read_chunk(root, version, name, offset, length)` returns the bytes of one
file of a READY snapshot and the file's size, or None when the version is not kept or the
name is not a file its manifest lists (so nothing outside the snapshot can be read). The
manifest is parsed once per snapshot (cached by path and modification time), not once per
chunk.

What it does not do: no sockets (the hub sends the chunk), no checksums (the actor checks
every file against the manifest it fetched first).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from protocol.weights import MANIFEST, READY


@functools.lru_cache(maxsize=16)
def _listed(manifest: Path, mtime_ns: int) -> frozenset[str]:
    return frozenset(json.loads(manifest.read_text())["files"]) | {MANIFEST}


def read_chunk(root: Path, version: int, name: str, offset: int, length: int) -> tuple[bytes, int] | None:
    folder = Path(root) / f"v{version:06d}"
    manifest = folder / MANIFEST
    try:
        if not (folder / READY).exists() or name not in _listed(manifest, manifest.stat().st_mtime_ns):
            return None
        path = folder / name
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        return data, path.stat().st_size
    except FileNotFoundError:  # pruned between the check and the read
        return None
