"""Remote weights: seconds to pull a snapshot over the wire, for the tiny model and a ~1 GB one.

Runs the learner's real hub (its `weights_fetch` handler) on loopback and an actor-side
`RemoteWeights` client that fetches, checksums and verifies the snapshot into an empty
folder; prints seconds and MB/s per model, and the ratio to a local file copy of the
same folder measured in the same run.

    .venv/bin/python bench/remote_weights.py [--big-layers 16]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package

import argparse  # noqa: E402
import asyncio  # noqa: E402
import queue  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from actors.remote_weights import RemoteWeights  # noqa: E402
from learner.hub import Hub  # noqa: E402
from learner.ledger import Ledger  # noqa: E402
from learner.model import build_tiny_model, build_tokenizer  # noqa: E402
from protocol.config import RunConfig  # noqa: E402
from protocol.transport import DealerEndpoint  # noqa: E402
from protocol.weights import publish_snapshot  # noqa: E402


def big_model(layers: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=82, hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


async def fetch_once(root: Path, model, tok, work: Path) -> tuple[float, int]:
    cfg = RunConfig()
    rows = [{"id": "p", "prompt": "1+1=", "meta": {}}]
    hub = Hub(cfg, Ledger(work / "ledger.sqlite"), rows, rows, queue.Queue(), run_id="bench")
    info = publish_snapshot(root, 1, model, tok, keep=1)
    await hub.publish(info, 0.0)
    serving = asyncio.get_running_loop().create_task(hub.serve())
    ep = DealerEndpoint(hub.ep.address, "bench-actor")
    remote = RemoteWeights(work / "fetched", ep.send)
    await ep.send("hello", role="actor", name="bench-actor", capabilities={})

    async def pump():
        while True:
            msg = await ep.recv()
            if msg["kind"] in ("weights_chunk", "error"):
                remote.chunks.put_nowait(msg)

    reader = asyncio.get_running_loop().create_task(pump())
    t = time.perf_counter()
    await remote.fetch(1, info["manifest_sha256"])
    seconds = time.perf_counter() - t
    reader.cancel()
    serving.cancel()
    ep.close()
    hub.ep.close()
    return seconds, remote.bytes_fetched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big-layers", type=int, default=16, help="layers of the big model (16 -> ~1 GB fp32)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = build_tokenizer()
    for name, model in (("tiny", build_tiny_model(0)), ("big", big_model(args.big_layers))):
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            seconds, nbytes = asyncio.run(fetch_once(work / "weights", model, tok, work))
            t = time.perf_counter()
            shutil.copytree(work / "weights" / "v000001", work / "copy")
            copy_s = time.perf_counter() - t
        mb = nbytes / 1e6
        print(f"{name:5s} {mb:9.1f} MB  wire fetch {seconds:7.2f}s ({mb / seconds:7.1f} MB/s)  "
              f"local copy {copy_s:6.2f}s  fetch/copy {seconds / max(copy_s, 1e-9):5.1f}x")
        del model


if __name__ == "__main__":
    main()
