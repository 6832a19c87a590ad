"""Weight sync at real sizes: publish / verify / load / digest against a raw safetensors save + load.

Builds a randomly initialised model of Qwen2.5-0.5B's shape (`--sizes 0.5b,1.5b` adds the
1.5B shape; tied embeddings, vocabulary 151,936) on CPU, holds it as the learner does
(float32 master weights) and publishes snapshots in the checkpoint's dtype (`--dtype
bfloat16`, as Qwen ships). Side by side in one invocation, each phase `--repeats` times,
interleaved with the baseline:
  * raw: `safetensors.torch.save_file` of the snapshot's tensors (already cast) + `load_file`
    and copying them into the actor's model (`load_state_dict`), nothing checked;
  * publish: `protocol.weights.publish_snapshot` (cast, write, checksums, manifest, READY);
  * verify: `verify_snapshot` (every file's sha256 against the manifest);
  * load: what an HF actor does (`load_verified` + `load_state_dict` into a model of the
    snapshot's dtype);
  * digest: `param_digest` of the actor's parameters (what `weights_loaded` proves);
  * wire (`--repeats` rounds, medians): an actor process without the shared filesystem fetching the snapshot from the
    real hub over loopback (`actors/remote_weights.py`: BLAKE3 checked while receiving),
    MB/s, into a folder on disk and into tmpfs (/dev/shm: the wire without this machine's
    disk), next to a plain sequential write of the same bytes into the same disk folder (the
    disk's ceiling at that moment) and raw pyzmq moving the snapshot's weights file in the same frames between
    two processes (ROUTER -> DEALER over TCP loopback, zero-copy sends, nothing checked or
    written): the ceiling of this machine's loopback at this moment;
  * broadcast: the torch.distributed path (gloo) from this process to a second one
    (`protocol/weights_broadcast.py`): pack, broadcast and unpack seconds, MB/s, digest match.
Prints seconds, the ratio of each phase to raw save + load (goal <= 1.3), MB/s (goal >= 500)
and the wire's ratios to a plain disk write and to raw pyzmq; results into `bench/results/weights_sync.json`.

    .venv/bin/python bench/weights_sync.py [--sizes 0.5b] [--repeats 3] [--dtype bfloat16]

Does NOT: train, touch a GPU, or read any downloaded weights (the models are random).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package

import argparse  # noqa: E402
import asyncio  # noqa: E402
import gc  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import queue  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from learner.model import build_tokenizer  # noqa: E402
from protocol import weights as W  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # Qwen2.5 configs (hidden, intermediate, layers, heads, kv heads); vocabulary 151,936, tied
    "0.5b": (896, 4864, 24, 14, 2),
    "1.5b": (1536, 8960, 28, 12, 2),
    "smoke": (128, 256, 2, 4, 2),  # a quick check of the bench itself (~20M parameters, mostly embedding)
}


def qwen_shaped(size: str) -> Qwen2ForCausalLM:
    hidden, inter, layers, heads, kv = SHAPES[size]
    cfg = Qwen2Config(vocab_size=151_936, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True,
                      max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg).eval()


def snapshot_tensors(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors a snapshot holds: one per storage (tied embeddings once), in `dtype`."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to(dtype).contiguous() if t.is_floating_point() else t.detach().contiguous()
    return out


def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def publish(root: Path, version: int, model, tok, dtype: torch.dtype) -> dict:
    kw = {"dtype": dtype} if "dtype" in inspect.signature(W.publish_snapshot).parameters else {}
    return W.publish_snapshot(root, version, model, tok, keep=1, **kw)


def raw_load(actor_model, path: Path) -> None:
    """The baseline load: safetensors `load_file` (lazy, mmap) + copying the values into the model."""
    with torch.no_grad():
        actor_model.load_state_dict(load_file(str(path)), strict=False)


def actor_load(actor_model, folder: Path) -> None:
    _, state = W.load_verified(folder)
    with torch.no_grad():
        actor_model.load_state_dict(state, strict=False)  # tied: the file holds the embedding once


def file_dtype(folder: Path) -> torch.dtype:
    from safetensors import safe_open

    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            return dtypes[f.get_slice(next(iter(f.keys()))).get_dtype()]
    raise FileNotFoundError(f"no safetensors in {folder}")


async def wire_fetch(info: dict, work: Path, into: Path) -> tuple[float, int]:
    """Seconds and bytes for an actor process without the shared filesystem to fetch a
    snapshot through the real hub (this process) over loopback into the folder `into`."""
    from learner.hub import Hub
    from learner.ledger import Ledger
    from protocol.config import RunConfig

    rows = [{"id": "p", "prompt": "1+1=", "meta": {}}]
    hub = Hub(RunConfig(), Ledger(work / "ledger.sqlite"), rows, rows, queue.Queue(), run_id="bench")
    await hub.publish(info, 0.0)
    serving = asyncio.get_running_loop().create_task(hub.serve())
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--fetch-worker", hub.ep.address, "--version", str(info["version"]),
        "--manifest-sha256", info["manifest_sha256"], "--into", str(into),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    serving.cancel()
    hub.ep.close()
    shutil.rmtree(into, ignore_errors=True)
    result = json.loads(out.decode().strip().splitlines()[-1])
    return result["seconds"], result["bytes"]


async def fetch_worker(address: str, version: int, manifest_sha256: str, into: Path) -> None:
    """The actor side of `wire_fetch` (a separate process): hello, then fetch; prints JSON."""
    from actors.remote_weights import RemoteWeights
    from protocol.transport import DealerEndpoint

    ep = DealerEndpoint(address, "bench-actor")
    remote = RemoteWeights(into, ep.send)
    await ep.send("hello", role="actor", name="bench-actor", capabilities={})

    reader = asyncio.get_running_loop().create_task(remote.pump(ep.recv))
    t = time.perf_counter()
    await remote.fetch(version, manifest_sha256)
    seconds = time.perf_counter() - t
    reader.cancel()
    ep.close()
    print(json.dumps({"seconds": seconds, "bytes": remote.bytes_fetched}))


def wire_runs(info: dict, work: Path, folder: Path, repeats: int) -> dict:
    """`repeats` rounds of: fetch to disk, fetch to tmpfs (/dev/shm: the wire without this
    machine's disk), raw pyzmq with the largest weights file; seconds and MB/s of each."""
    out: dict = {"disk_s": [], "tmpfs_s": [], "raw_zmq_MBps": [], "disk_write_MBps": [], "bytes": 0}
    shm = Path("/dev/shm")
    largest = max(folder.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    for _ in range(repeats):
        out["disk_write_MBps"].append(disk_write_MBps(work, sum(p.stat().st_size for p in folder.iterdir())))
        seconds, out["bytes"] = asyncio.run(wire_fetch(info, work, work / "fetched"))
        out["disk_s"].append(seconds)
        if shm.is_dir():
            out["tmpfs_s"].append(asyncio.run(wire_fetch(info, work, Path(tempfile.mkdtemp(dir=shm))))[0])
        out["raw_zmq_MBps"].append(raw_zmq_MBps(largest))
    return out


def disk_write_MBps(folder: Path, n_bytes: int) -> float:
    """MB/s of a plain sequential write of `n_bytes` (MAX_WEIGHTS_CHUNK pieces, one thread,
    nothing hashed or received) into a new file in `folder`, then deleted: the ceiling of
    this disk at this moment for what a fetch to disk writes (page cache, with the kernel's
    dirty-page writeback throttling a long write to the device's own rate)."""
    from protocol.messages import MAX_WEIGHTS_CHUNK

    piece = np.random.default_rng(0).integers(0, 256, MAX_WEIGHTS_CHUNK, dtype=np.uint8).tobytes()
    path = folder / "disk-write.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        for start in range(0, n_bytes, MAX_WEIGHTS_CHUNK):
            f.write(piece[:min(MAX_WEIGHTS_CHUNK, n_bytes - start)])
    seconds = time.perf_counter() - t
    path.unlink()
    return n_bytes / 1e6 / seconds


def raw_zmq_MBps(path: Path) -> float:
    """MB/s of raw pyzmq moving the file's bytes in MAX_WEIGHTS_CHUNK frames from this process
    (ROUTER, zero-copy sends from a memory map) to a worker process (DEALER) that drops them."""
    import mmap

    import zmq

    from protocol.messages import MAX_WEIGHTS_CHUNK

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    child = subprocess.Popen([sys.executable, __file__, "--zmq-sink", f"tcp://127.0.0.1:{port}",
                              "--bytes", str(path.stat().st_size)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    ident, _ = sock.recv_multipart()
    with open(path, "rb") as f:
        view = memoryview(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
    for start in range(0, len(view), MAX_WEIGHTS_CHUNK):
        sock.send_multipart([ident, view[start:start + MAX_WEIGHTS_CHUNK]], copy=False)
    seconds = json.loads(child.communicate(timeout=600)[0].strip().splitlines()[-1])["seconds"]
    sock.close(linger=1000)
    ctx.term()
    return len(view) / 1e6 / seconds


def zmq_sink(address: str, n_bytes: int) -> None:
    """The receiving side of `raw_zmq_MBps` (a separate process): seconds from hello to the last byte."""
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    sock.connect(address)
    sock.send(b"hello")
    t, got = time.perf_counter(), 0
    while got < n_bytes:
        got += len(sock.recv(copy=False).buffer)
    print(json.dumps({"seconds": time.perf_counter() - t}))


def broadcast_seconds(model, dtype: torch.dtype, size: str) -> dict:
    """The torch.distributed path (gloo) to one receiver process holding the same architecture:
    seconds to pack, to broadcast (offer -> every rank has the bytes), and for the receiver to
    unpack into its model; the receiver's digest must equal the sender's."""
    from protocol import weights_broadcast as B

    tx = B.Sender("127.0.0.1", 0, 2, timeout_s=600)
    child = subprocess.Popen([sys.executable, __file__, "--recv-worker", str(tx.port), "--size", size,
                              "--dtype", str(dtype).removeprefix("torch.")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert tx.ready.wait(600), "the receiver never joined"
    t = time.perf_counter()
    buf, lid = B.pack(model.state_dict().items(), dtype)
    pack_s = time.perf_counter() - t
    t = time.perf_counter()
    tx.offer(1, buf, lid)
    while 1 not in tx.sent and tx.failed is None:
        tx.thread.join(0.01)
    send_s = time.perf_counter() - t
    tx.close()
    got = json.loads(child.communicate(timeout=600)[0].strip().splitlines()[-1])
    with torch.no_grad():
        rounded = {k: v.to(dtype) for k, v in B.canonical(model.state_dict().items()).items()}
    return {"pack_s": pack_s, "broadcast_s": send_s, "unpack_s": got["unpack_s"],
            "digest_match": got["digest"] == W.param_digest(rounded.items())}


def recv_worker(port: int, size: str, dtype: torch.dtype) -> None:
    """Rank 1 of `broadcast_seconds` (a separate process): receive one version, unpack, print JSON."""
    from protocol import weights_broadcast as B

    with torch.device("meta"):
        model = qwen_shaped(size)
    model = model.to_empty(device="cpu").to(dtype)
    model.tie_weights()
    rx = B.Receiver("127.0.0.1", port, 1, 2, model.state_dict().items(), dtype, timeout_s=600)
    version, buf = rx.received.get(timeout=600)
    t = time.perf_counter()
    B.unpack(buf, model.state_dict().items(), dtype)
    unpack_s = time.perf_counter() - t
    rx.thread.join(600)
    digest = W.param_digest(B.canonical(model.state_dict().items()).items())
    print(json.dumps({"version": version, "unpack_s": unpack_s, "digest": digest}))


def measure(size: str, dtype: torch.dtype, repeats: int, work: Path) -> dict:
    model, tok = qwen_shaped(size), build_tokenizer()
    info = publish(work / "w", 0, model, tok, dtype)  # warm-up; tells the snapshot's dtype
    folder = Path(info["folder"])
    snap_dtype = file_dtype(folder)
    tensors = snapshot_tensors(model, snap_dtype)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    actor = Qwen2ForCausalLM.from_pretrained(folder, dtype=snap_dtype).eval()
    t: dict[str, list[float]] = {k: [] for k in ("raw_save", "raw_load", "publish", "verify", "load", "digest")}
    for r in range(repeats):
        raw = work / "raw.safetensors"
        t["raw_save"].append(timed(save_file, tensors, str(raw), metadata={"format": "pt"})[0])
        t["raw_load"].append(timed(raw_load, actor, raw)[0])
        raw.unlink()
        dt, info = timed(publish, work / "w", r + 1, model, tok, dtype)
        t["publish"].append(dt)
        folder = Path(info["folder"])
        t["verify"].append(timed(W.verify_snapshot, folder)[0])
        t["load"].append(timed(actor_load, actor, folder)[0])
        dt, digest = timed(W.param_digest, actor.state_dict().items())
        t["digest"].append(dt)
        match = digest == info["digest"]  # what the actor holds = what the learner published
        gc.collect()
    wire = wire_runs(info, work, folder, repeats)
    wire_s, shm_s, raw_zmq, disk_w = (float(np.median(wire[k])) if wire[k] else None
                                      for k in ("disk_s", "tmpfs_s", "raw_zmq_MBps", "disk_write_MBps"))
    wire_bytes = wire["bytes"]
    bcast = broadcast_seconds(model, snap_dtype, size)
    med = {k: float(np.median(v)) for k, v in t.items()}
    base = med["raw_save"] + med["raw_load"]
    out = {"size": size, "params": sum(p.numel() for p in tensors.values()), "snapshot_dtype": str(snap_dtype),
           "snapshot_bytes": nbytes, "digest_match": match, "seconds": t, "median_s": med, "raw_save_load_s": base,
           "ratio_to_raw": {k: med[k] / base for k in ("publish", "verify", "load", "digest")},
           "wire_fetch_s": wire_s, "wire_MBps": wire_bytes / 1e6 / wire_s,
           "disk_write_MBps": disk_w, "wire_disk_over_disk_write": wire_bytes / 1e6 / wire_s / disk_w,
           "wire_fetch_tmpfs_s": shm_s, "wire_MBps_tmpfs": wire_bytes / 1e6 / shm_s if shm_s else None,
           "raw_zmq_MBps": raw_zmq, "wire_tmpfs_over_raw_zmq": wire_bytes / 1e6 / shm_s / raw_zmq if shm_s else None,
           "wire_runs": wire,
           "broadcast": bcast, "broadcast_MBps": nbytes / 1e6 / bcast["broadcast_s"]}
    del model, actor, tensors
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0.5b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "weights_sync.json"))
    ap.add_argument("--fetch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--version", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--manifest-sha256", help=argparse.SUPPRESS)
    ap.add_argument("--into", help=argparse.SUPPRESS)
    ap.add_argument("--recv-worker", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--zmq-sink", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.zmq_sink:
        return zmq_sink(args.zmq_sink, args.bytes)
    if args.recv_worker:
        return recv_worker(int(args.recv_worker), args.size, getattr(torch, args.dtype))
    if args.fetch_worker:
        return asyncio.run(fetch_worker(args.fetch_worker, args.version, args.manifest_sha256, Path(args.into)))
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    results = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as d:
            r = measure(size, dtype, args.repeats, Path(d))
        results.append(r)
        med, rat = r["median_s"], r["ratio_to_raw"]
        print(f"{size}: {r['params'] / 1e6:.0f}M params, snapshot {r['snapshot_dtype']} {r['snapshot_bytes'] / 1e9:.2f} GB; "
              f"raw save {med['raw_save']:.2f}s + load {med['raw_load']:.2f}s = {r['raw_save_load_s']:.2f}s")
        print("  " + "  ".join(f"{k} {med[k]:.2f}s ({rat[k]:.2f}x)" for k in rat))
        print(f"  wire fetch {r['wire_fetch_s']:.2f}s ({r['wire_MBps']:.0f} MB/s to disk = "
              f"{r['wire_disk_over_disk_write']:.2f}x a plain write of the bytes to that disk, {r['disk_write_MBps']:.0f} MB/s; "
              f"{r['wire_MBps_tmpfs'] or 0:.0f} MB/s to tmpfs = {r['wire_tmpfs_over_raw_zmq'] or 0:.2f}x raw pyzmq "
              f"{r['raw_zmq_MBps']:.0f} MB/s)" +
              f"; broadcast {r['broadcast']['broadcast_s']:.2f}s ({r['broadcast_MBps']:.0f} MB/s, pack "
              f"{r['broadcast']['pack_s']:.2f}s, unpack {r['broadcast']['unpack_s']:.2f}s, digest match "
              f"{r['broadcast']['digest_match']})")
    out = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "results": results, "loadavg": os.getloadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
