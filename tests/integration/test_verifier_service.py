"""The verifier service as a real process: a stuck completion times out on its own (its
correct sibling still gets reward 1, other jobs flow), verdicts are cached and stamped with
version and sandbox mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
    while want - set(got):  # one deadline for all: the verifier's own messages must not extend it
        identity, msg = await asyncio.wait_for(router.recv(), max(0.0, timeout - (time.monotonic() - start)))
        if msg["kind"] == "verdicts":
            got[msg["job_id"]] = (msg, time.monotonic() - start)
    return got


@contextlib.asynccontextmanager
async def _verifier(tmp_path, timeout_s: float, workers: int, env: dict | None = None):
    """A real `scca verifier` process connected to a router here: (router, its identity)."""
    router = RouterEndpoint("tcp://127.0.0.1:0")
    cfg = tmp_path / "v.json"
    cfg.write_text(json.dumps({"verifier": {"completion_timeout_s": timeout_s, "slots": 4}}))
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "verifier", str(cfg), "--connect", router.address,
                             "--name", "verifier-t", "--workers", str(workers)], cwd=ROOT, env=env)
    try:
        identity = None
        while identity is None:
            ident, msg = await asyncio.wait_for(router.recv(), 120)
            identity = ident if msg["kind"] == "hello" else None
        yield router, identity
    finally:
        proc.terminate()
        proc.wait(30)
        router.close()


async def _drive(tmp_path) -> dict:
    async with _verifier(tmp_path, 3.0, 2) as (router, identity):
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


# A plug-in reward that imports in the verifier's own process but raises in its scorer
# workers (as a plug-in needing state the workers lack would): every score call raises.
WORKER_FAILS = '''import multiprocessing
if multiprocessing.current_process().name != "MainProcess":
    raise RuntimeError("cannot import in a scorer worker")
def score(prompt, completion, meta):
    return 1.0
'''


async def _drive_failing_scorer(tmp_path) -> dict:
    (tmp_path / "worker_fails.py").write_text(WORKER_FAILS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    async with _verifier(tmp_path, 30.0, 1, env) as (router, identity):
        row = arith.generate(0, 1, "heldout")[0]
        await router.send(identity, "verify_job", job_id="p1", task="worker_fails:score", prompt="p", meta={},
                          completions=["a", "b"])
        await router.send(identity, "verify_job", job_id="a1", task="arith", prompt=row["prompt"], meta=row["meta"],
                          completions=[row["meta"]["solution"]])
        got = await _collect(router, {"p1", "a1"}, 60)
        await router.send(identity, "verify_job", job_id="p2", task="worker_fails:score", prompt="p", meta={},
                          completions=["a"])
        return {**got, **await _collect(router, {"p2"}, 60)}


def test_a_scorer_that_raises_scores_zero_and_the_job_is_still_answered(tmp_path):
    """Fault policy: a raising scorer costs its completions (reward 0, reason scorer_error,
    not cached: asked again, it is scored again), never the job's verdicts or other jobs'."""
    got = asyncio.run(_drive_failing_scorer(tmp_path))
    p1, _ = got["p1"]
    assert p1["rewards"] == [0.0, 0.0] and [d["reason"] for d in p1["details"]] == ["scorer_error"] * 2
    assert "cannot import in a scorer worker" in p1["details"][0]["error"]
    assert got["a1"][0]["rewards"] == [1.0]
    p2, _ = got["p2"]
    assert p2["details"][0]["reason"] == "scorer_error" and not p2["details"][0].get("cached")
