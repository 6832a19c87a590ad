"""Tests of the tiny model, its tokenizer and a short bootstrap run (CPU, seconds)."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.bootstrap import (
    NOT_IN_WINDOW,
    bootstrap,
    completion_nll_sum,
    encode_examples,
    evaluate_greedy,
    generate_greedy,
)
from learner.model import (
    BOS_ID,
    CHARS,
    EOS_ID,
    PAD_ID,
    build_tiny_model,
    build_tokenizer,
)
from verifiers.tasks import arith

torch.set_num_threads(1)
PROBE = "Reference solution:\n47+85=132;#151\n\n47+85+19="


def test_tokenizer_round_trip_and_left_padding():
    tok = build_tokenizer()
    assert len(tok) == 4 + len(CHARS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    ids = tok(PROBE)["input_ids"]
    assert ids[0] == BOS_ID and len(ids) == len(PROBE) + 1
    assert tok.decode(ids, skip_special_tokens=True) == PROBE
    for text in ["  a  b \n\n", CHARS, "x" * 3]:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    b = tok(["1=", "12+3="], padding=True)
    assert b["input_ids"][0][:3] == [PAD_ID, PAD_ID, PAD_ID]
    assert b["attention_mask"][0] == [0, 0, 0, 1, 1, 1]


def test_model_is_untied_small_and_seeded():
    m0, m0b, m1 = build_tiny_model(0), build_tiny_model(0), build_tiny_model(1)
    n = sum(p.numel() for p in m0.parameters())
    assert 1.5e6 < n < 2.5e6
    assert m0.config.tie_word_embeddings is False
    assert m0.lm_head.weight.data_ptr() != m0.model.embed_tokens.weight.data_ptr()
    assert torch.equal(m0.lm_head.weight, m0b.lm_head.weight)
    assert not torch.equal(m0.lm_head.weight, m1.lm_head.weight)


def test_left_padding_positions_match_unpadded_and_generate_agrees():
    tok, model = build_tokenizer(), build_tiny_model(3).eval()
    prompts = ["1+2=", "47+85+19=", PROBE]
    batch = encode_examples(tok, prompts, ["3", "47+8", "4"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits
        for i in range(len(prompts)):
            n = int(batch["attention_mask"][i].sum())
            single = model(input_ids=batch["input_ids"][i:i + 1, -n:]).logits[0]
            assert (logits[i, -n:] - single).abs().max() < 1e-4
    together = generate_greedy(model, tok, prompts, 10)
    alone = [generate_greedy(model, tok, [p], 10)[0] for p in prompts]
    assert together == alone


def test_completion_loss_counts_completion_tokens_only():
    tok, model = build_tokenizer(), build_tiny_model(0)
    batch = encode_examples(tok, ["1+2=", "10+20+30="], ["3", "10+20=30;30+30=60;#60"])
    nll, n = completion_nll_sum(model, batch)
    assert n == (1 + 1) + (21 + 1)  # completion chars + <eos> per example
    assert abs(float(nll.detach()) / n - math.log(len(tok))) < 0.3  # untrained: ~uniform


def test_evaluate_greedy_uses_the_scorer():
    tok, model = build_tokenizer(), build_tiny_model(0)
    rows = arith.generate(0, 5, "heldout")
    assert evaluate_greedy(model, tok, rows, lambda p, m, c: {"reward": 1.0}, 2, 4) == 1.0
    assert evaluate_greedy(model, tok, rows, arith.score, 2, 30) == 0.0


def test_bootstrap_smoke(tmp_path):
    train = arith.generate(0, 64, "train")
    held = arith.generate(0, 16, "heldout")
    lines = []
    out = bootstrap(tmp_path / "m", train, held, arith.score, seed=0, target_low=0.0,
                    target_high=1.0, max_steps=20, eval_every=10, log=lines.append,
                    eval_rows=8, batch_size=20, warmup_steps=2, num_threads=1)
    assert out["steps"] == 20 and out["heldout_n"] == 16
    losses = [h["train_loss"] for h in out["history"]]
    assert losses[0] < 3.6  # mean over steps 1..10 (starts at ln 82 = 4.41)
    assert losses[1] < losses[0] - 0.5
    assert 0.0 <= out["heldout_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "m" / "bootstrap.json").read_text())
    assert saved["steps"] == 20 and saved["config"]["lr"] == 1e-3
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok.padding_side == "left"
    assert tok.decode(tok(PROBE)["input_ids"], skip_special_tokens=True) == PROBE
    assert model.config.tie_word_embeddings is False
    assert any("step 20" in s for s in lines)


def test_bootstrap_raises_when_window_is_never_reached(tmp_path):
    train = arith.generate(0, 32, "train")
    held = arith.generate(0, 4, "heldout")
    with pytest.raises(RuntimeError, match=NOT_IN_WINDOW):
        bootstrap(tmp_path / "m", train, held, arith.score, target_low=0.9, target_high=1.0,
                  max_steps=2, eval_every=1, log=lambda s: None, batch_size=8, num_threads=1)
    assert not (tmp_path / "m" / "bootstrap.json").exists()
