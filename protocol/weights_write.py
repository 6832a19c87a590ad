"""Writing a model's weights as Hugging Face safetensors files, hashing them as they are written.

`write_weights(folder, tensors, dtype)` writes the canonical tensors (tied tensors once)
into the files `save_pretrained` of transformers 5 would write for them: `model.safetensors`,
or `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json` above
MAX_SHARD_SIZE (the same `huggingface_hub` split, tensors in the given order). Each file is
the safetensors format byte for byte as `safetensors.torch.save_file(..., metadata={"format":
"pt"})` writes it: an 8-byte little-endian header length, the JSON header padded with
spaces to a multiple of 8, then the tensors' bytes, larger dtypes first, then by name.

One tensor at a time is cast to `dtype` (a floating tensor; None keeps its dtype), written
to the file with plain `os.write` calls from its own memory (no serialised copy of the
file is ever built, so memory holds at most WRITE_AHEAD_BYTES of cast tensors beyond
the model), and hashed on those same bytes while the next tensor is cast: the file's
BLAKE3 and the tensor's entry of the parameter digest (`protocol.weights_hash`). So the
files are written once and never read back, and the digest is of exactly the bytes in
the files. Every weights file is fsynced before `write_weights` returns.

What this module does NOT do: write config or tokenizer files, make the folder atomic
(`protocol.weights.publish_snapshot` does), or read snapshots.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
from pathlib import Path

import torch
from huggingface_hub import split_state_dict_into_shards_factory

from protocol.weights_hash import combine, digest_entry, hasher, tensor_bytes

MAX_SHARD_SIZE = "50GB"  # save_pretrained's default shard size in transformers 5
WEIGHTS_PATTERN = "model{suffix}.safetensors"
INDEX_NAME = "model.safetensors.index.json"
HEADER_ALIGN = 8  # safetensors pads its JSON header with spaces to this multiple
WRITE_AHEAD_BYTES = 512 << 20  # cast tensors waiting to be written and hashed at most
WRITE_PIECE = 64 << 20  # bytes per os.write call

# safetensors' dtype codes, in the order of its Dtype enum (the data is laid out by descending rank, then name)
_CODES = [(torch.bool, "BOOL"), (torch.uint8, "U8"), (torch.int8, "I8"), (torch.int16, "I16"),
          (torch.float16, "F16"), (torch.bfloat16, "BF16"), (torch.int32, "I32"), (torch.float32, "F32"),
          (torch.float64, "F64"), (torch.int64, "I64")]
DTYPE_CODE = dict(_CODES)
_RANK = {dt: i for i, (dt, _) in enumerate(_CODES)}


def target_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def _layout(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None) -> tuple[list[str], bytes]:
    """(tensor names in data order, the padded header with its 8-byte length) of one file."""
    for name, t in tensors.items():
        if target_dtype(t, dtype) not in DTYPE_CODE:
            raise TypeError(f"{name}: dtype {target_dtype(t, dtype)} has no safetensors code here")
    order = sorted(tensors, key=lambda n: (-_RANK[target_dtype(tensors[n], dtype)], n))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        t = tensors[name]
        dt = target_dtype(t, dtype)
        n = t.numel() * dt.itemsize
        header[name] = {"dtype": DTYPE_CODE[dt], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + HEADER_ALIGN) % HEADER_ALIGN)
    return order, len(text).to_bytes(8, "little") + text


def _write_all(fd: int, data: memoryview) -> None:
    for start in range(0, len(data), WRITE_PIECE):
        piece = data[start:start + WRITE_PIECE]
        while piece:
            piece = piece[os.write(fd, piece):]


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    with torch.no_grad():
        return t.detach().to("cpu", target_dtype(t, dtype)).contiguous()


def write_file(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None,
               entries: dict[str, bytes]) -> str:
    """Write one safetensors file of `tensors` cast to `dtype`, fsync it; add each tensor's
    digest entry to `entries`. Returns the file's BLAKE3 hex."""
    order, header = _layout(tensors, dtype)
    file_h = hasher()
    file_h.update(header)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    busy: collections.deque = collections.deque()  # (bytes held, write future, hash future)
    held = 0

    def hash_one(name: str, t: torch.Tensor, data: memoryview) -> None:
        file_h.update(data)
        entries[name] = digest_entry(name, t)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as wpool, concurrent.futures.ThreadPoolExecutor(1) as hpool:
            _write_all(fd, memoryview(header))
            for name in order:
                t = _cast(tensors[name], dtype)
                data = tensor_bytes(t)
                busy.append((len(data), wpool.submit(_write_all, fd, data), hpool.submit(hash_one, name, t, data)))
                held += len(data)
                while busy and (held > WRITE_AHEAD_BYTES or name == order[-1]):
                    n, *futs = busy.popleft()
                    for fut in futs:
                        fut.result()
                    held -= n
        os.fsync(fd)
    finally:
        os.close(fd)
    return file_h.hexdigest()


def shard_plan(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None,
               max_shard_size: int | str = MAX_SHARD_SIZE):
    """huggingface_hub's StateDictSplit of the tensors' sizes in `dtype` (as save_pretrained splits)."""
    sizes = {name: t.numel() * target_dtype(t, dtype).itemsize for name, t in tensors.items()}
    return split_state_dict_into_shards_factory(sizes, get_storage_size=lambda n: n,
                                                filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_size)


def write_weights(folder: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype | None,
                  total_parameters: int, max_shard_size: int | str = MAX_SHARD_SIZE) -> tuple[dict[str, str], str]:
    """Write the canonical `tensors` as save_pretrained's weight files in `folder` (module
    docstring). Returns ({file name: BLAKE3 hex}, parameter digest of the written tensors)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    split = shard_plan(tensors, dtype, max_shard_size)
    entries: dict[str, bytes] = {}
    hashes = {}
    for fname, names in split.filename_to_tensors.items():
        hashes[fname] = write_file(Path(folder) / fname, {n: tensors[n] for n in names}, dtype, entries)
    if split.is_sharded:
        index = {"metadata": {"total_parameters": total_parameters, **split.metadata},
                 "weight_map": split.tensor_to_filename}
        text = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
        (Path(folder) / INDEX_NAME).write_bytes(text)
    return hashes, combine(entries)
