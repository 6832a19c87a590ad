"""Weight snapshots on disk: publish, verify, load, digest, canary (DESIGN §4).

A snapshot is `root/v{version:06d}/`: a complete Hugging Face folder (safetensors weights,
config, tokenizer) plus `manifest.json`
    {"format": 2, "version": int, "files": {relative name: BLAKE3 hex}, "param_digest": hex}
and an empty `READY` marker. It is written to `root/.tmp-v{version:06d}-<random>/`, every
file fsynced, the folder renamed into place, and `READY` written (and fsynced) last, so a
folder without `READY` is never a snapshot. Only the last `keep` READY versions are kept.
The weights files are the ones `save_pretrained` writes (same names, sharding and bytes),
but written by `protocol.weights_write`, which hashes each tensor's bytes as it writes
them: the files are never read back to be checksummed, and the digest is of the bytes in
the files. A format-1 manifest (sha256, before BLAKE3) is refused with an error that says
so; the learner rewrites such a snapshot when it resumes (`publish_start`).

Canonical tensors: the parameter digest is taken over one canonical set on every side. A
live model's `state_dict()` names a tensor shared by several modules (tied input/output
embeddings) once per name; `canonical_tensors` keeps it once, under its first name in
`state_dict()` order (the base model's input embedding, registered before the output
head), which is the one name `save_pretrained` writes. A file never holds aliases. So a
tied model and its snapshot agree, untied models are unchanged, and a real difference in
any value is still caught.

Dtypes: a snapshot keeps the dtype of the folder the run started from (`dtype` of
`publish_snapshot`: bf16 in, bf16 out) while the learner trains fp32 master weights. The
digest covers values, not storage (`protocol.weights_hash`): a floating tensor whose
values are all bfloat16 is hashed as bf16 bytes, any other as float32, so a bf16 snapshot
and an actor that holds those same values in float32 agree. `saved_precision`
rounds the live model to the snapshot's dtype for the duration of a block, so the
learner's canary is computed on exactly the values actors load.

What this module does NOT do: move files between hosts (actors without a shared
filesystem fetch them over the wire elsewhere), decide what to do on a mismatch (the
caller's fault policy), or load weights into a model (engines do; they call
`load_state_dict` here to get verified tensors). No pickle: tensors go through safetensors.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from protocol import weights_hash
from protocol.weights_hash import file_hash
from protocol.weights_write import write_weights

FORMAT = 2  # 2: BLAKE3 file hashes and digest (weights_hash); 1 (sha256) is refused with a clear error
MANIFEST = "manifest.json"
READY = "READY"

CANARY_PROMPT = "12+34+56="
CANARY_COMPLETION = "12+34=46;46+56=102;#102"
CANARY_TOL = 1e-3  # absolute tolerance on the canary log-probability (nats)

_VERSION_RE = re.compile(r"^v(\d{6,})$")


class WeightsError(Exception):
    """A snapshot is missing, incomplete, corrupted or does not fit the model."""


# ----------------------------------------------------------------------------- hashing


def canonical_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{name: tensor} with every tensor shared by several names kept once, under its first name.

    Shared = the same storage, offset, shape, stride and dtype (tied embeddings are one
    Parameter registered twice). Iterate `model.state_dict().items()` (registration order),
    so the kept name is the one `save_pretrained` writes.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name, t in named_tensors:
        if name in out:
            raise ValueError(f"canonical_tensors: duplicate tensor name {name}")
        key = None
        if t.numel() > 0 and t.device.type != "meta":
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)
            if key in seen:
                continue
            seen.add(key)
        out[name] = t
    return out


def param_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """BLAKE3 hex digest of the canonical set of named tensors, independent of order, device
    and floating storage dtype (`protocol.weights_hash` defines it: format 2).

    Shared tensors count once (`canonical_tensors`). Floating tensors are hashed by value:
    as bf16 bytes when every value is a bfloat16, else as float32 bytes, so a bf16 file and a
    float32 model holding the same values agree, and any changed value, shape or name
    disagrees. Use `model.state_dict().items()` (parameters + persistent buffers) on a live
    model, or the tensors of a snapshot's safetensors files.
    """
    return weights_hash.param_digest(canonical_tensors(named_tensors).items())


# ----------------------------------------------------------------------------- dtypes

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def folder_dtype(folder: Path) -> torch.dtype:
    """The floating dtype holding most parameters in the folder's safetensors files (headers
    only); a folder without them: config.json's `dtype` / `torch_dtype`; else float32."""
    counts: dict[torch.dtype, int] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                dt = _DTYPES.get(sl.get_dtype())
                if dt is not None:
                    counts[dt] = counts.get(dt, 0) + int(np.prod(sl.get_shape()))
    if counts:
        return max(counts, key=counts.get)
    cfg_path = Path(folder) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        name = cfg.get("dtype") or cfg.get("torch_dtype")
        if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
    return torch.float32


def cast_state(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """model.state_dict() with floating tensors cast to dtype; shared tensors stay shared."""
    memo: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key not in memo:
            memo[key] = t.detach().to(dtype) if t.is_floating_point() else t.detach()
        out[name] = memo[key]
    return out


def save_model(model, folder: Path, dtype: torch.dtype | None = None) -> None:
    """model.save_pretrained (safetensors) in `dtype` (None: as held); config.json names that dtype."""
    if dtype is None:
        model.save_pretrained(folder, safe_serialization=True)
        return
    model.save_pretrained(folder, safe_serialization=True, state_dict=cast_state(model, dtype))
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
    for k in keys:
        cfg[k] = str(dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


@contextmanager
def saved_precision(model, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside the block the model's floating tensors hold their values rounded to `dtype`
    (what a snapshot in that dtype stores); the exact values come back afterwards.
    No-op for None or a dtype the tensors already have. Costs one copy of the rounded tensors."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if dtype is not None:
        with torch.no_grad():
            for t in canonical_tensors(model.state_dict().items()).values():
                if t.is_floating_point() and t.dtype != dtype:
                    saved.append((t, t.clone()))
                    t.copy_(t.to(dtype).to(t.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for t, orig in saved:
                t.copy_(orig)


# ----------------------------------------------------------------------------- publish


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version_dirs(root: Path) -> list[tuple[int, Path]]:
    """(version, folder) for every `v{version}` folder under root, ascending."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _VERSION_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def snapshot_folder(root: Path, version: int) -> Path:
    return Path(root) / f"v{version:06d}"


def _weight_files(folder: Path, files: Iterable[str]) -> list[Path]:
    return [folder / f for f in sorted(files) if f.endswith(".safetensors")]


def in_parallel(*fns):
    """Run the callables in threads at once; their results in order (the first error is raised)."""
    with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
        futures = [pool.submit(fn) for fn in fns]
        return [f.result() for f in futures]


def file_tensors(paths: Iterable[Path]) -> dict[str, torch.Tensor]:
    """The tensors of safetensors files (memory-mapped: read as they are used)."""
    out: dict[str, torch.Tensor] = {}
    for p in paths:
        out.update(load_file(p))
    return out


def saved_names(model, state: dict[str, torch.Tensor]) -> list[str] | None:
    """The canonical tensor names in the order `save_pretrained` would write them, or None
    when it would write other names or shapes (a model whose checkpoint layout transformers
    converts on load, e.g. fused experts): then only `save_pretrained` writes it right."""
    from transformers.core_model_loading import revert_weight_conversion

    meta = {n: torch.empty(t.shape, dtype=t.dtype, device="meta") for n, t in state.items()}
    out = revert_weight_conversion(model, dict(meta))
    if out.keys() != meta.keys() or any(tuple(out[n].shape) != tuple(meta[n].shape) for n in out):
        return None
    return list(out)


def write_config(model, folder: Path, dtype: torch.dtype | None) -> None:
    """config.json (and generation_config.json) as save_pretrained writes them, naming `dtype`."""
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
    cfg_path = Path(folder) / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["architectures"] = [type(model).__name__.removeprefix("FSDP")]
    keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
    for k in keys:
        cfg[k] = str(dtype or model.dtype).removeprefix("torch.")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_model(model, folder: Path, dtype: torch.dtype | None) -> tuple[dict[str, str], str]:
    """The model's weights and config into `folder`, as `save_model` writes them, hashed while
    written (`protocol.weights_write`); weights files fsynced. Returns ({weights file: BLAKE3},
    parameter digest). Models whose saved layout differs from their state go through
    save_pretrained, then are hashed by reading the files back."""
    state = canonical_tensors(model.state_dict().items())
    names = saved_names(model, state)
    if names is None:
        return write_model_by_save_pretrained(model, folder, dtype)
    hashes, digest = write_weights(folder, {n: state[n] for n in names}, dtype, model.num_parameters())
    write_config(model, folder, dtype)
    return hashes, digest


def write_model_by_save_pretrained(model, folder: Path, dtype: torch.dtype | None) -> tuple[dict[str, str], str]:
    """`save_model`, then the weights files hashed and fsynced, the digest read from them."""
    save_model(model, folder, dtype)
    weights = sorted(Path(folder).glob("*.safetensors"))
    if not weights:
        raise WeightsError(f"save_pretrained wrote no .safetensors file in {folder}")
    digest, hashes, _ = in_parallel(
        lambda: param_digest(file_tensors(weights).items()),
        lambda: {p.name: file_hash(p) for p in weights},
        lambda: [_fsync_file(p) for p in weights])
    return hashes, digest


def publish_snapshot(root: Path, version: int, model, tokenizer, keep: int = 3,
                     dtype: torch.dtype | None = None) -> dict:
    """Write snapshot `version` of `model` + `tokenizer` under `root` atomically, its
    floating tensors in `dtype` (None: as the model holds them).

    Returns {"version", "folder" (absolute str), "manifest_sha256", "digest"}, the fields
    of a `weights_published` message plus the parameter digest. An existing folder of the
    same version (e.g. re-published after a learner restart) is replaced.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    final = snapshot_folder(root, version)
    tmp = root / f".tmp-v{version:06d}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        # The weights are hashed as they are written (the digest is of the bytes in the files)
        hashes, digest = write_model(model, tmp, dtype)
        tokenizer.save_pretrained(tmp)
        rel = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for name in rel:
            if name not in hashes:  # config, tokenizer, index: small
                hashes[name] = file_hash(tmp / name)
                _fsync_file(tmp / name)
        manifest = {"format": FORMAT, "version": int(version), "files": hashes, "param_digest": digest}
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        _fsync_file(tmp / MANIFEST)
        for d in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
            _fsync_dir(d)
        if final.exists():
            trash = root / f".old-{final.name}-{secrets.token_hex(4)}"
            final.rename(trash)
            shutil.rmtree(trash)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    ready = final / READY
    with open(ready, "wb") as f:
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(final)
    _fsync_dir(root)
    _prune(root, keep, current=final)
    return {
        "version": int(version),
        "folder": str(final),
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "digest": digest,
    }


def _prune(root: Path, keep: int, current: Path) -> None:
    """Keep the newest `keep` READY versions (always including `current`); delete older
    READY versions, folders that never became READY, and temp folders left by crashes."""
    ready = [(v, p) for v, p in _version_dirs(root) if (p / READY).is_file()]
    keep_set = {p for _, p in ready[-keep:]} | {current}
    for _, p in ready:
        if p not in keep_set:
            shutil.rmtree(p, ignore_errors=True)
    for _, p in _version_dirs(root):
        if p != current and not (p / READY).exists():
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():
        if p.name.startswith((".tmp-v", ".old-v")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def latest_snapshot(root: Path) -> Path | None:
    """Folder of the highest READY version under root, or None."""
    for _, p in reversed(_version_dirs(Path(root))):
        if (p / READY).is_file():
            return p
    return None


# ----------------------------------------------------------------------------- verify / load


def verify_snapshot(folder: Path, manifest_sha256: str | None = None) -> dict:
    """Check READY, the manifest (format 2, its sha256 if given), and every listed file's BLAKE3.

    Raises WeightsError naming the first problem; returns the parsed manifest.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"missing snapshot folder: {folder}")
    if not (folder / READY).is_file():
        raise WeightsError(f"missing READY in {folder}")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise WeightsError(f"missing {MANIFEST} in {folder}")
    raw = mpath.read_bytes()
    if manifest_sha256 is not None and hashlib.sha256(raw).hexdigest() != manifest_sha256:
        raise WeightsError(f"corrupted: {MANIFEST} sha256 mismatch in {folder}")
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise WeightsError(f"corrupted: {MANIFEST} is not JSON in {folder}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise WeightsError(f"unsupported {MANIFEST} format {fmt!r} in {folder}: this version reads format "
                           f"{FORMAT} (BLAKE3) only; format 1 (sha256) snapshots must be republished "
                           f"(a learner resuming a run rewrites them)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("version"), int):
        raise WeightsError(f"corrupted: {MANIFEST} lacks files/version in {folder}")
    for name in sorted(files):
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise WeightsError(f"corrupted: {MANIFEST} lists a path outside the folder: {name}")
        if not path.is_file():
            raise WeightsError(f"missing: {name} in {folder}")
        if file_hash(path) != files[name]:
            raise WeightsError(f"corrupted: {name} checksum mismatch in {folder}")
    return manifest


def load_verified(folder: Path, manifest_sha256: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """verify_snapshot, then read all its safetensors files into one CPU state dict.

    Returns (manifest, state_dict).
    """
    folder = Path(folder)
    manifest = verify_snapshot(folder, manifest_sha256)
    weights = _weight_files(folder, manifest["files"])
    if not weights:
        raise WeightsError(f"missing: no .safetensors file listed in {folder / MANIFEST}")
    out: dict[str, torch.Tensor] = {}
    for w in weights:
        part = load_file(w)
        dup = out.keys() & part.keys()
        if dup:
            raise WeightsError(f"corrupted: tensor {sorted(dup)[0]} in two files of {folder}")
        out.update(part)
    return manifest, out


def load_state_dict(folder: Path, manifest_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Verify the snapshot, then return its tensors (see load_verified)."""
    return load_verified(folder, manifest_sha256)[1]


# ----------------------------------------------------------------------------- canary


def canary_logprob(model, tokenizer) -> float:
    """Σ_t log π(c_t | CANARY_PROMPT, c_<t) over the canary completion, in float64.

    Prompt ids: `tokenizer(CANARY_PROMPT)` (with whatever special tokens the tokenizer
    adds, e.g. <bos>); completion ids: `tokenizer(CANARY_COMPLETION,
    add_special_tokens=False)` followed by the eos id when the tokenizer has one. One
    forward pass over prompt+completion in eval mode without grad; logits are cast to
    float64 before the log-softmax. The model's train/eval mode is restored afterwards.
    Learner and actors compare the values with tolerance CANARY_TOL.
    """
    prompt = tokenizer(CANARY_PROMPT)["input_ids"]
    completion = tokenizer(CANARY_COMPLETION, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion = completion + [tokenizer.eos_token_id]
    device = next(model.parameters()).device
    ids = torch.tensor([prompt + completion], dtype=torch.long, device=device)  # [1, P+C]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]  # [P+C, V]
    finally:
        model.train(was_training)
    P, C = len(prompt), len(completion)
    logp = torch.log_softmax(logits[P - 1 : P + C - 1].to(torch.float64), dim=-1)  # [C, V]
    target = ids[0, P:].unsqueeze(-1)  # [C, 1]
    return float(logp.gather(-1, target).sum().item())
