"""A user's own model trains as it is: a Qwen2-architecture folder (tied embeddings, bf16, byte-level
BPE, chat template, eos <|im_end|> plus a list of eos ids, no pad token) on a GSM8K-style file.

qwen_gsm.py builds the folder and the data locally (no download) and warm-starts the model
briefly in the chat format; then `scca run` (learner, 2 HF actors, 1 verifier as real
processes over loopback) trains it with `prompt_format = "chat"`. While it runs, a probe
actor loads a published snapshot, changes one value of the tied embedding and reports
the honest digest and canary of what it now holds: it must be quarantined. Checked after
the run: held-out accuracy rose by an asserted amount, every real actor's weights check
passed, actor and learner scored the same token ids, `final_model/` loads with
transformers in bf16 with its chat template and eos ids, and generates an answer."""

from __future__ import annotations

import json
import time

import pytest
import torch
import zmq
from conftest import read_jsonl, scca, wait_for
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.hf import HFEngine
from protocol import messages
from protocol.prompts import PromptRenderer
from protocol.weights import latest_snapshot

pytestmark = pytest.mark.integration

STEPS = 60
MIN_GAIN = 0.08  # held-out greedy accuracy after - before, 200 prompts (measured: +0.155, +0.195 at 60 steps;
#                  +0.10 .. +0.155 at 40; one 40-step run on 100 prompts gained only +0.04, hence 60)
MAX_MEAN_MISMATCH = 0.05  # mean |log π_prox - log μ| per step: bf16 snapshots of fp32 master weights (measured <= 0.03)
RUN_TIMEOUT_S = 1500

CONFIG = """
[model]
folder = "{model}"

[task]
name = "math"
train_file = "{train}"
heldout_file = "{heldout}"
prompt_format = "chat"

[learner]
lr = 2e-4
prompts_per_step = 16
max_steps = {steps}
eval_every = 0
checkpoint_every = 100

[actor]
count = 2
group_size = 8
max_new_tokens = 32

[verifier]
count = 1
"""


def _tied_liar(address: str, weights_root) -> dict:
    """An actor that loads a published snapshot, then truly holds other weights: one value
    of the tied embedding (= the output head) moved by 1e-2. It reports what it holds."""
    folder = wait_for(lambda: latest_snapshot(weights_root), 120, "a published snapshot")
    engine = HFEngine(folder)  # loaded before saying hello: a silent peer would be dropped
    assert engine.model.get_output_embeddings().weight is engine.model.get_input_embeddings().weight
    with torch.no_grad():
        engine.model.lm_head.weight[0, 0] += 1e-2
    digest, canary = engine.digest(), engine.canary()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.IDENTITY, "probe-tied-liar")
    sock.connect(address)
    try:
        sock.send(messages.encode(messages.make("hello", "probe-tied-liar", 0, role="actor", name="probe-tied-liar",
                                                capabilities={})))
        sock.send(messages.encode(messages.make("weights_loaded", "probe-tied-liar", 1, version=engine.version,
                                                digest=digest, canary_logprob=canary)))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sock.poll(500):
                msg = messages.decode(sock.recv())
                if msg["kind"] == "error":
                    return msg
        raise AssertionError("the learner did not answer the tied liar")
    finally:
        sock.close()


def _ready(run_dir) -> dict | None:
    try:
        return json.loads((run_dir / "learner.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or half written
        return None


@pytest.fixture(scope="module")
def own_run(qwen_gsm, tmp_path_factory):
    root = tmp_path_factory.mktemp("own-model")
    run_dir = root / "run"
    cfg = root / "qwen.toml"
    cfg.write_text(CONFIG.format(model=qwen_gsm / "model", train=qwen_gsm / "train.jsonl",
                                 heldout=qwen_gsm / "heldout.jsonl", steps=STEPS))
    proc = scca("run", str(cfg), "--out", str(run_dir), log=root / "launcher.log")
    try:
        ready = wait_for(lambda: _ready(run_dir), 300, "learner.json", proc)
        liar = _tied_liar(ready["address"], run_dir / "weights")
        rc = proc.wait(RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"dir": run_dir, "rc": rc, "liar": liar, "model": qwen_gsm / "model", "log": root / "launcher.log",
            "rows": [r for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]}


def test_chat_training_raises_heldout_accuracy(own_run):
    assert own_run["rc"] == 0, own_run["log"].read_text()[-3000:]
    s = json.loads((own_run["dir"] / "summary.json").read_text())
    before, after = s["heldout_accuracy_before"], s["heldout_accuracy_after"]
    print(f"\nQwen2-style tied bf16 model, chat format, {STEPS} steps: held-out greedy accuracy {before:.3f} -> {after:.3f}")
    assert s["completed"] and s["steps"] == STEPS
    assert after >= before + MIN_GAIN, f"held-out accuracy {before:.3f} -> {after:.3f}"
    record = json.loads((own_run["dir"] / "prompt_format.json").read_text())
    assert record["format"] == "chat" and record["example_rendered"].endswith("<|im_start|>assistant\n")
    assert record["snapshot_dtype"] == "bfloat16" and record["pad_id"] == record["eos_ids"][-1]  # no pad: eos


def test_every_weights_check_passes_and_a_tied_liar_is_quarantined(own_run):
    events = read_jsonl(own_run["dir"] / "weights_sync.jsonl")
    real = [e for e in events if e["peer"].startswith("actor-")]
    assert {e["peer"] for e in real} == {"actor-0", "actor-1"} and all(e["ok"] for e in real)
    assert max(e["version"] for e in real) >= STEPS - 1
    liar = [e for e in events if e["peer"] == "probe-tied-liar"]
    assert own_run["liar"]["code"] == "quarantined" and len(liar) == 1 and not liar[0]["ok"]
    assert liar[0]["digest"] != liar[0]["expected_digest"]
    assert json.loads((own_run["dir"] / "summary.json").read_text())["weights_loaded_mismatched"] == 1
    with safe_open(str(own_run["dir"] / "weights" / f"v{STEPS:06d}" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"} and "lm_head.weight" not in f.keys()


def test_actors_and_learner_scored_the_same_token_ids(own_run):
    """mismatch = mean |log π_prox - log μ| over completion tokens; other prompt ids at the
    actor than at the learner would put it far above bf16 rounding."""
    worst = max(r["mismatch"] for r in own_run["rows"])
    mean = sum(r["mismatch"] for r in own_run["rows"]) / len(own_run["rows"])
    print(f"\nbehaviour vs learner log-prob mismatch: mean {mean:.4f}, max {worst:.4f} nats/token")
    assert mean < MAX_MEAN_MISMATCH


def test_final_model_loads_keeps_dtype_template_eos_and_generates(own_run):
    final, source = own_run["dir"] / "final_model", own_run["model"]
    model = AutoModelForCausalLM.from_pretrained(final, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    tok, src_tok = AutoTokenizer.from_pretrained(final), AutoTokenizer.from_pretrained(source)
    assert tok.chat_template == src_tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token is None
    gen = json.loads((final / "generation_config.json").read_text())
    assert gen["eos_token_id"] == json.loads((source / "generation_config.json").read_text())["eos_token_id"]
    rows = [json.loads(x) for x in (own_run["model"].parent / "heldout.jsonl").read_text().splitlines()[:8]]
    renderer = PromptRenderer(tok, "chat", folder=str(final))
    texts = []
    for row in rows:
        ids = torch.tensor([renderer.encode(row["question"])])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                             eos_token_id=gen["eos_token_id"], pad_token_id=tok.eos_token_id)
        texts.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert all("####" in t for t in texts), texts
