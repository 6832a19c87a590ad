"""Hashes of weight snapshots: the files' checksums and the parameter digest (DESIGN §4).

Both use BLAKE3 (256-bit, hex): a cryptographic hash several times faster than sha256 on
one core, so checking a snapshot costs little next to writing or reading it.

* `file_hash(path)`: BLAKE3 of a file's bytes, read in FILE_CHUNK pieces. `Hasher` is the
  same hash fed incrementally (a writer or a download hashes the bytes as they pass).
* `param_digest(named_tensors)`: one digest of a canonical set of named tensors (tied
  tensors already collapsed by the caller, see `protocol.weights.canonical_tensors`),
  independent of order, device and floating storage dtype:

      digest = BLAKE3(DIGEST_DOMAIN + concat over names in sorted order of
                      b"{name}\\0{kind}\\0{shape as comma list}\\0{n_bytes}\\0" + BLAKE3(data))

  A floating tensor is read as float32 values (bf16 and fp16 widen exactly; float64
  rounds to float32, as format 1 did). If the low 16 bits of every float32 are zero, every
  value is exactly a bfloat16: kind = "bf16" and data = the high 16 bits of each value
  (which are the bf16 bytes themselves). Otherwise kind = "f32" and data = the float32
  bytes. The kind is a function of the values, so the encoding is injective: a bf16
  snapshot, a bf16 model and a float32 model holding the same values all agree, and any
  changed value, shape or name disagrees. A bf16 tensor is hashed in place (no cast); a
  float32 one costs one pass that tests its low halves and copies out and hashes its high
  halves, COMPACT_PIECE values at a time. A
  non-floating tensor: kind = its dtype string, data = its little-endian bytes.
  Per-tensor hashes make the digest computable in any order (a writer hashes each tensor
  as it writes it) and let tensors be hashed in parallel.

What this module does NOT do: decide which tensors are canonical (the caller passes them),
read or write snapshot folders (`protocol.weights`), or keep format 1's sha256 digest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import blake3
import numpy as np
import torch

FILE_CHUNK = 16 << 20  # bytes read per hash update
DIGEST_DOMAIN = b"scca-param-digest-2\0"  # prefix: a format-2 digest never equals another hash
COMPACT_PIECE = 1 << 20  # float32 values tested and compacted to bf16 halves at a time (4 MB: in cache)
LOW_HALF = 0xFFFF  # the float32 bits a bfloat16 does not have

if sys.byteorder != "little":  # the digest and the safetensors files are little-endian; so are all targets we run on
    raise ImportError("protocol.weights_hash assumes a little-endian machine")


def hasher() -> blake3.blake3:
    """A fresh incremental BLAKE3 (update(bytes-like), hexdigest())."""
    return blake3.blake3()


def file_hash(path: Path) -> str:
    """BLAKE3 hex of the file's bytes."""
    h = hasher()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(FILE_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor (no copy), as a flat byte memoryview."""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)  # numpy has no bfloat16: same bytes
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return memoryview(np.ascontiguousarray(t.numpy()).reshape(-1)).cast("B")


def _bf16_hash(u32: np.ndarray) -> bytes | None:
    """BLAKE3 of the bf16 halves (high 16 bits) of float32 values given as uint32, or None
    when some value has a non-zero low half. One pass, COMPACT_PIECE values at a time: the
    low halves are tested and the high halves copied out and hashed while in cache (the
    same hash as of one contiguous copy)."""
    h = blake3.blake3()
    low = np.empty(min(COMPACT_PIECE, len(u32)), np.uint32)
    for start in range(0, len(u32), COMPACT_PIECE):
        piece = u32[start:start + COMPACT_PIECE]
        np.bitwise_and(piece, LOW_HALF, out=low[:len(piece)])
        if low[:len(piece)].any():
            return None
        h.update(np.ascontiguousarray(piece.view(np.uint16)[1::2]).view(np.uint8))  # little-endian: high = odd
    return h.digest()


def _data_hash(t: torch.Tensor) -> tuple[str, int, bytes]:
    """(kind, number of bytes hashed, BLAKE3 of them) of one tensor (module docstring)."""
    t = t.detach()
    if not t.is_floating_point() or t.dtype == torch.bfloat16:
        raw = tensor_bytes(t.to("cpu").contiguous())
        return ("bf16" if t.is_floating_point() else str(t.dtype)), len(raw), blake3.blake3(raw).digest()
    t = t.to("cpu", torch.float32).contiguous()  # fp16: exact; float64: rounds (as format 1)
    compact = _bf16_hash(t.numpy().reshape(-1).view(np.uint32))
    if compact is not None:
        return "bf16", 2 * t.numel(), compact
    raw = tensor_bytes(t)
    return "f32", len(raw), blake3.blake3(raw).digest()


def digest_entry(name: str, t: torch.Tensor) -> bytes:
    """The bytes one tensor contributes to `param_digest` (module docstring)."""
    kind, n_bytes, data_hash = _data_hash(t)
    shape = ",".join(str(s) for s in t.shape)
    return f"{name}\0{kind}\0{shape}\0{n_bytes}\0".encode() + data_hash


def combine(entries: dict[str, bytes]) -> str:
    """The digest of {name: digest_entry(name, tensor)}: the entries in sorted name order."""
    h = hasher()
    h.update(DIGEST_DOMAIN)
    for name in sorted(entries):
        h.update(entries[name])
    return h.hexdigest()


def param_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """BLAKE3 hex digest of already canonical named tensors (module docstring)."""
    entries: dict[str, bytes] = {}
    for name, t in named_tensors:
        if name in entries:
            raise ValueError(f"param_digest: duplicate tensor name {name}")
        entries[name] = digest_entry(name, t)
    return combine(entries)
