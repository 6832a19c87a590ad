"""The torch.distributed weights path on CPU (gloo) with two processes: the learner side
(this process, rank 0) broadcasts two versions of the default tiny model; an actor-side
process (rank 1) that starts from other weights receives them into its own model and
reports its parameter digest and canary log-probability, which must equal the sender's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from learner.model import build_tiny_model, build_tokenizer
from protocol import weights_broadcast as B
from protocol.weights import canary_logprob, param_digest

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent("""
    import json, sys, torch
    from learner.model import build_tiny_model, build_tokenizer
    from protocol import weights_broadcast as B
    from protocol.weights import canary_logprob, param_digest
    port, layers, dtype = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
    model = build_tiny_model(1)
    if layers != len(model.model.layers):
        model.model.layers = model.model.layers[:layers]
    tok = build_tokenizer()
    rx = B.Receiver("127.0.0.1", port, 1, 2, model.state_dict().items(), dtype, timeout_s=60)
    print(json.dumps({"before": param_digest(model.state_dict().items())}), flush=True)
    for _ in range(2):
        version, buf = rx.received.get(timeout=60)
        if isinstance(buf, Exception):
            print(json.dumps({"version": version, "error": str(buf)}), flush=True)
            continue
        B.unpack(buf, model.state_dict().items(), dtype)
        print(json.dumps({"version": version, "digest": param_digest(model.state_dict().items()),
                          "canary": canary_logprob(model, tok)}), flush=True)
    rx.thread.join(60)
    print(json.dumps({"stopped": not rx.alive, "failed": repr(rx.failed)}), flush=True)
""")


def _run(layers: int, dtype: str = "float32") -> tuple[list[dict], list[tuple[str, float]]]:
    torch.set_num_threads(1)
    model, tok = build_tiny_model(0), build_tokenizer()
    tx = B.Sender("127.0.0.1", 0, 2, timeout_s=60)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tx.port), str(layers), dtype], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert tx.ready.wait(60), "the receiver never joined the group"
        expected = []
        for version in (1, 2):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            tx.offer_model(version, model.state_dict().items(), getattr(torch, dtype))
            if dtype == "float32":
                expected.append((param_digest(model.state_dict().items()), canary_logprob(model, tok)))
            while version not in tx.sent and tx.failed is None:  # one version at a time: none is skipped
                tx.thread.join(0.05)
        tx.close()
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert tx.failed is None and tx.sent == [1, 2]
    return [json.loads(line) for line in out.splitlines()], expected


def test_broadcast_reaches_a_second_process_with_the_same_digest_and_canary():
    lines, expected = _run(layers=4)
    before, v1, v2, end = lines
    assert before["before"] != expected[0][0]  # the receiver started from other weights
    for got, (digest, canary), version in ((v1, expected[0], 1), (v2, expected[1], 2)):
        assert got["version"] == version and got["digest"] == digest
        assert abs(got["canary"] - canary) < 1e-6
    assert end["stopped"] and end["failed"] == "None"


def test_a_receiver_with_another_model_reports_the_mismatch_and_nothing_hangs():
    lines, _ = _run(layers=3)
    assert [x["version"] for x in lines[1:3]] == [1, 2]
    assert all("layout" in x["error"] for x in lines[1:3])
    assert lines[3]["stopped"]
