"""GPU smoke tests: the HF engine, a learner step with bf16 autocast, and (if installed)
the vLLM engine, all on CUDA with the tiny model (random init, nothing downloaded).

Skipped where `torch.cuda.is_available()` is False (CI has no GPU); run on a GPU host
with `pytest -m gpu tests/gpu` (or `deploy/gpu_check.sh`). Checks numbers, not just that
it runs: CUDA logprobs and canary against the CPU float32 reference, and that a bf16
step moves the weights with a finite loss.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from actors.engines.hf import HFEngine
from learner.logprobs import build_batch, pad_right, token_logprobs
from learner.loss import group_advantages, policy_loss
from learner.model import build_tiny_model, build_tokenizer
from protocol.weights import CANARY_TOL, canary_logprob, publish_snapshot

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FP32_LOGPROB_TOL = 1e-3  # CUDA float32 (TF32 off) vs CPU float32, per token (nats)
BF16_LOGPROB_TOL = 0.1  # bf16 autocast vs float32, per token (nats)
PROMPTS = ["12+34=", "5+67=", "80+9=", "41+41="]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, tok = build_tiny_model(0).eval(), build_tokenizer()
    info = publish_snapshot(tmp_path_factory.mktemp("gpu") / "w", 0, model, tok)
    return {"folder": Path(info["folder"]), "model": model, "tok": tok, "info": info}


def _teacher_forced(model, tok, groups):
    prompt_ids = [tok(p)["input_ids"] for p, g in zip(PROMPTS, groups) for _ in g]
    samples = [s for g in groups for s in g]
    batch = build_batch(prompt_ids, [s.token_ids.tolist() for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, mask, _ = token_logprobs(model, batch)
    beh = pad_right([s.logprobs for s in samples], logp.shape[1], 0.0)
    return logp.cpu(), mask.cpu(), beh


def test_hf_engine_on_cuda_matches_the_cpu_learner(snapshot):
    engine = HFEngine(snapshot["folder"], threads=1, seed=0, device="cuda")
    groups = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=32)
    logp, mask, beh = _teacher_forced(snapshot["model"], snapshot["tok"], groups)
    assert mask.sum() > 0
    assert float(((logp - beh).abs() * mask).max()) < FP32_LOGPROB_TOL
    assert abs(engine.canary() - canary_logprob(snapshot["model"], snapshot["tok"])) <= CANARY_TOL
    assert engine.digest() == snapshot["info"]["digest"]


def test_a_bf16_autocast_learner_step_on_cuda(snapshot):
    tok = snapshot["tok"]
    model = build_tiny_model(0).cuda().train()
    engine = HFEngine(snapshot["folder"], threads=1, seed=1, device="cuda")
    groups = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=24)
    prompt_ids = [tok(p)["input_ids"] for p, g in zip(PROMPTS, groups) for _ in g]
    samples = [s for g in groups for s in g]
    batch = build_batch(prompt_ids, [s.token_ids.tolist() for s in samples], tok.pad_token_id)
    with torch.no_grad():
        ref, _, _ = token_logprobs(model, batch)  # float32
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp, mask, _ = token_logprobs(model, batch)
    assert float(((logp.float() - ref).abs() * mask).max()) < BF16_LOGPROB_TOL
    rewards = torch.tensor([float(i % 2) for i in range(len(samples))])
    adv = torch.cat([group_advantages(rewards[i : i + 4], std_normalize=True) for i in range(0, len(samples), 4)])
    behav = pad_right([s.logprobs for s in samples], logp.shape[1], 0.0).cuda()
    loss, _ = policy_loss(logp.float(), logp.detach().float(), behav, adv.cuda()[:, None] * mask, mask)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (pip install 'scca[gpu]')")
def test_vllm_engine_on_cuda_matches_the_learner(snapshot):
    from actors.engines.vllm import VLLMEngine

    engine = VLLMEngine(snapshot["folder"], threads=1, seed=0)
    groups = engine.generate(PROMPTS, 4, temperature=1.0, max_new_tokens=32)
    logp, mask, beh = _teacher_forced(snapshot["model"], snapshot["tok"], groups)
    assert float(((logp - beh).abs() * mask).max()) < FP32_LOGPROB_TOL
    assert abs(engine.canary() - canary_logprob(snapshot["model"], snapshot["tok"])) <= CANARY_TOL
