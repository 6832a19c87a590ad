"""The verifier service as a real process: a stuck completion times out on its own (its
correct sibling still gets reward 1, other jobs flow), verdicts are cached and stamped with
version and sandbox mode."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from protocol.transport import RouterEndpoint
from verifiers.tasks import arith

pytestmark = pytest.mark.integration

HANG = "```python\ndef f(x):\n    while True:\n        pass\n```"
GOOD = "```python\ndef f(x):\n    return 2 * x\n```"
TESTS = "assert f(1) == 2\n"


async def _collect(router: RouterEndpoint, want: set[str], timeout: float) -> dict[str, tuple[dict, float]]:
    got, start = {}, time.monotonic()
    while want - set(got):
        identity, msg = await asyncio.wait_for(router.recv(), timeout)
        if msg["kind"] == "verdicts":
            got[msg["job_id"]] = (msg, time.monotonic() - start)
    return got


async def _drive(tmp_path) -> dict:
    router = RouterEndpoint("tcp://127.0.0.1:0")
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps({"verifier": {"completion_timeout_s": 3.0, "slots": 4}}))
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "verifier", str(cfg), "--connect", router.address,
                             "--name", "verifier-t", "--workers", "2"], cwd=ROOT)
    try:
        identity = None
        while identity is None:
            ident, msg = await asyncio.wait_for(router.recv(), 120)
            identity = ident if msg["kind"] == "hello" else None
        row = arith.generate(0, 1, "heldout")[0]
        good = [row["meta"]["solution"], "12+"]
        await router.send(identity, "verify_job", job_id="stuck", task="code", prompt="write f",
                          meta={"tests": TESTS}, completions=[HANG, GOOD])
        await router.send(identity, "verify_job", job_id="a1", task="arith", prompt=row["prompt"], meta=row["meta"],
                          completions=good)
        first = await _collect(router, {"stuck", "a1"}, 60)
        await router.send(identity, "verify_job", job_id="a2", task="arith", prompt=row["prompt"], meta=row["meta"],
                          completions=good)
        second = await _collect(router, {"a2"}, 60)
        return {**first, **second}
    finally:
        proc.terminate()
        proc.wait(30)
        router.close()


def test_stuck_completion_times_out_alone_others_flow_and_verdicts_are_cached(tmp_path):
    got = asyncio.run(_drive(tmp_path))
    stuck, stuck_s = got["stuck"]
    assert stuck["rewards"] == [0.0, 1.0] and stuck["details"][0]["reason"] == "timeout"
    assert stuck["details"][1]["reason"] == "pass" and stuck["details"][1]["hidden_checks"] == 1
    a1, a1_s = got["a1"]
    assert a1["rewards"] == [1.0, 0.0] and a1_s < stuck_s  # answered while the stuck job was running
    assert a1["verifier_version"].startswith("arith-1/") and a1["details"][0]["sandbox"] in ("bwrap", "unshare", "none")
    a2, _ = got["a2"]
    assert a2["rewards"] == [1.0, 0.0] and all(d.get("cached") for d in a2["details"])
    assert not any(d.get("cached") for d in a1["details"])
