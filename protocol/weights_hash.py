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
  float32 one costs one scan of its low halves and a copy of its high halves. A
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
LOW_HALF_MASK = 0xFFFF  # the float32 bits a bfloat16 does not have

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
    return memoryview(np.ascontiguousarray(t.numpy())).cast("B")


def _digest_data(t: torch.Tensor) -> tuple[str, torch.Tensor]:
    """(kind, contiguous CPU tensor whose bytes are hashed) of one tensor (module docstring)."""
    t = t.detach()
    if not t.is_floating_point():
        return str(t.dtype), t.to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return "bf16", t.to("cpu").contiguous()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)  # fp16: exact; float64: rounds (as format 1)
    halves = t.contiguous().view(-1).view(torch.int16).view(-1, 2)  # [n, 2]: (low, high) of each value
    if not bool(halves[:, 0].any()):
        return "bf16", halves[:, 1].to("cpu").contiguous().view(torch.bfloat16).view(t.shape)
    return "f32", t.to("cpu").contiguous()


def digest_entry(name: str, t: torch.Tensor) -> bytes:
    """The bytes one tensor contributes to `param_digest` (module docstring)."""
    kind, data = _digest_data(t)
    raw = tensor_bytes(data)
    shape = ",".join(str(s) for s in t.shape)
    return f"{name}\0{kind}\0{shape}\0{len(raw)}\0".encode() + blake3.blake3(raw).digest()


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
