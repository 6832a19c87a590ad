"""actors/remote_weights.py against the real hub over loopback: pipelined chunks reassemble
the snapshot byte for byte, and a file that does not match its manifest fails the fetch."""

from __future__ import annotations

import asyncio
import queue

import pytest

from actors import remote_weights as RW
from learner import hub as hub_module
from learner.hub import Hub
from learner.ledger import Ledger
from protocol.config import RunConfig
from protocol.transport import DealerEndpoint
from protocol.weights import WeightsError, publish_snapshot, verify_snapshot
from tiny import tiny_model, tiny_tokenizer


async def _fetch(tmp_path, corrupt: bool = False):
    info = publish_snapshot(tmp_path / "weights", 1, tiny_model(0), tiny_tokenizer(), keep=1)
    rows = [{"id": "p", "prompt": "1+1=", "meta": {}}]
    hub = Hub(RunConfig(), Ledger(tmp_path / "ledger.sqlite"), rows, rows, queue.Queue(), run_id="t")
    await hub.publish(info, 0.0)
    if corrupt:  # after publishing: the manifest still names the old checksum
        weights = next((tmp_path / "weights" / "v000001").glob("*.safetensors"))
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
    serving = asyncio.get_running_loop().create_task(hub.serve())
    ep = DealerEndpoint(hub.ep.address, "remote-actor")
    remote = RW.RemoteWeights(tmp_path / "fetched", ep.send)
    await ep.send("hello", role="actor", name="remote-actor", capabilities={})

    reader = asyncio.get_running_loop().create_task(remote.pump(ep.recv))
    try:
        return info, await remote.fetch(1, info["manifest_sha256"]), remote
    finally:
        reader.cancel()
        serving.cancel()
        ep.close()
        hub.ep.close()


async def test_pipelined_fetch_reassembles_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(RW, "RANGE_BYTES", 64 * 1024)  # many ranges, WINDOW of them in flight,
    monkeypatch.setattr(hub_module, "MAX_WEIGHTS_CHUNK", 16 * 1024)  # each answered in 4 chunks
    info, folder, remote = await _fetch(tmp_path)
    src = tmp_path / "weights" / "v000001"
    assert verify_snapshot(folder, info["manifest_sha256"])["version"] == 1
    for f in src.iterdir():
        if f.is_file():
            assert (folder / f.name).read_bytes() == f.read_bytes()
    assert remote.bytes_fetched == sum(f.stat().st_size for f in src.iterdir() if f.name != "READY")


async def test_a_file_that_differs_from_its_manifest_fails_the_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(RW, "RANGE_BYTES", 256 * 1024)
    with pytest.raises(WeightsError, match="model.safetensors of v1 does not match its blake3 in the manifest"):
        await _fetch(tmp_path, corrupt=True)
    assert not any(p.name.startswith("v") for p in (tmp_path / "fetched").iterdir())
