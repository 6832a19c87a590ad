"""learner/credit/diagnostics.py: AUROC / mass on hand-made cases, and char -> token mapping on arith."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from learner.credit.diagnostics import (
    auroc,
    credit_diagnostics,
    first_error_auroc,
    first_error_mass,
    first_wrong_token_index,
    mass_after_error,
    token_pieces,
    weight_stats,
)
from learner.model import EOS_ID, build_tokenizer
from verifiers.tasks import arith

torch.set_num_threads(1)

MASK = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]])
E = torch.tensor([1, 2, -1])  # row 2 is a correct sample


def test_perfect_inverted_constant_detectors():
    perfect = torch.tensor([[0.5, 2.5, 0.5, 0.5, 0.0], [0.5, 0.5, 2.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0, 0.0]])
    inverted = torch.tensor([[1.2, 0.4, 1.2, 1.2, 0.0], [1.1, 1.1, 0.8, 0.0, 0.0], [0.1, 1.9, 0.0, 0.0, 0.0]])
    for upto in (False, True):
        assert first_error_auroc(perfect, MASK, E, upto) == 1.0
        assert first_error_auroc(inverted, MASK, E, upto) == 0.0
        assert first_error_auroc(MASK.clone(), MASK, E, upto) == 0.5
    assert first_error_mass(perfect, MASK, E) == pytest.approx((2.5 / 4 + 2.0 / 3) / 2)
    assert first_error_mass(MASK, MASK, E) == pytest.approx((1 / 4 + 1 / 3) / 2)  # uniform = 1/n
    assert mass_after_error(MASK, MASK, E) == pytest.approx((2 / 4 + 0 / 3) / 2)
    assert mass_after_error(perfect, MASK, E) == pytest.approx((1.0 / 4 + 0.0) / 2)


def test_auroc_with_ties_and_the_upto_restriction():
    # pos 1.0 and 3.0; neg 1.0, 2.0, 4.0 -> pairs won: (1 vs 1: 0.5) + (3 > 1, 3 > 2) = 2.5 of 6
    assert auroc(np.array([1.0, 3.0]), np.array([1.0, 2.0, 4.0])) == pytest.approx(2.5 / 6)
    assert math.isnan(auroc(np.array([]), np.array([1.0])))
    # row: (0.2, 3.0, 1.0, 5.0), error at 1: all tokens 2/3 (5.0 after the error wins); up to it 1.0
    w = torch.tensor([[0.2, 3.0, 1.0, 5.0]])
    m, e = torch.ones(1, 4), torch.tensor([1])
    assert first_error_auroc(w, m, e) == pytest.approx(2 / 3)
    assert first_error_auroc(w, m, e, upto_error=True) == 1.0
    d = credit_diagnostics(w, m, e)
    assert d["credit/first_error_auroc_upto"] == 1.0 and d["credit/mass_after_error"] == pytest.approx(6.0 / 9.2)


def test_samples_without_a_countable_error_are_skipped():
    w = MASK.clone()
    assert math.isnan(first_error_mass(w, MASK, torch.tensor([-1, -1, -1])))
    assert math.isnan(first_error_auroc(w, MASK, torch.tensor([-1, 5, -1])))  # 5 >= n: not counted
    assert first_error_mass(w, MASK, torch.tensor([-1, 3, 0])) == pytest.approx(0.5)  # row 1 skipped
    # error at position 0 with upto_error: no negative token left -> NaN
    assert math.isnan(first_error_auroc(w, MASK, torch.tensor([0, -1, -1]), upto_error=True))
    with pytest.raises(ValueError):
        first_error_mass(w, MASK, torch.tensor([0, 1]))


def _token_texts(tok, ids):
    return [tok.decode([i], skip_special_tokens=True) for i in ids]


def test_first_wrong_char_maps_to_the_token_on_arith():
    tok = build_tokenizer()
    meta = {"solution": "47+85=132;132+19=151;#151", "answer": "151"}
    cases = [
        ("47+85=132;132+19=150;#150", "stop"),   # wrong digit
        ("47+85=13", "stop"),                     # stops early: the wrong token is <eos>
        ("47+85=132;132+19=151;#1511", "stop"),   # extra character
        ("47+85=132;13", "length"),               # cut at the length limit, early
    ]
    for text, finish in cases:
        verdict = arith.score("47+85+19=", meta, text)
        fw = verdict["first_wrong"]
        ids = tok(text, add_special_tokens=False)["input_ids"] + ([EOS_ID] if finish == "stop" else [])
        assert len(ids) == len(text) + (finish == "stop")  # one token per character (+ eos)
        t = first_wrong_token_index(_token_texts(tok, ids), fw)
        if fw < len(text):
            sol = meta["solution"]
            assert t == fw and (t >= len(sol) or text[t] != sol[t])  # char index == token index
        elif finish == "stop":
            assert t == len(text) and ids[t] == EOS_ID
        else:
            assert t == -1  # no token was ever emitted there
    assert first_wrong_token_index(["1", "", "2"], 1) == 1  # an empty special at the position
    assert first_wrong_token_index(["ab", "cd"], 3) == 1 and first_wrong_token_index(["a"], None) == -1


def _byte_bpe():
    """A byte-level BPE tokenizer trained here: multi-character digit tokens, and a
    non-ASCII character that only exists as two byte tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["12+34=46;46+56=102;#102", "7+85=92;92-19=73;#73"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


def test_token_pieces_follow_the_tokenizer_offsets_not_characters():
    tok = _byte_bpe()
    text = "12+34=46;46+é=102;#102"
    ids = tok(text)["input_ids"] + [tok.eos_token_id]
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == text and pieces[-1] == ""  # <eos> contributes no text
    assert len(ids) < len(text) and any(len(p) > 1 for p in pieces)  # merged digit tokens
    e_pos = text.index("é")
    e_tok = first_wrong_token_index(pieces, e_pos)
    # é is two byte tokens: the first (text "") is where the wrong choice began, the second completes it
    assert pieces[e_tok] == "" and pieces[e_tok + 1] == "é" and pieces[e_tok - 1] == "+"
    assert tok.decode(ids[:e_tok], skip_special_tokens=True) == text[:e_pos]
    for c in range(len(text)):  # every character maps to the token whose span starts or holds it
        t = first_wrong_token_index(pieces, c)
        start = len("".join(pieces[:t]))
        assert start <= c < start + len(pieces[t]) or (pieces[t] == "" and start == c)
    assert first_wrong_token_index(pieces, len(text)) == len(ids) - 1  # stops early -> the <eos>


def test_weight_stats_hand_values():
    w = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.5, 1.5, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, -2.0, -1.0])
    st = weight_stats(w, mask, adv)
    vals = torch.tensor([1.0, 1.0, 2.0, 0.0, 0.5, 1.5, 1.0], dtype=torch.float64)
    assert st["credit/w_max"] == 2.0
    assert st["credit/w_std"] == pytest.approx(float(vals.std(unbiased=False)))
    assert st["credit/w_sq_mean"] == pytest.approx(float((vals ** 2).mean()))
    assert st["credit/neg_weight_kept"] == pytest.approx((2.0 + 0.0 + 0.5 + 1.5 + 1.0) / 5)
    assert st["credit/neg_adv_total"] == pytest.approx((-4.0 - 0.5 - 1.5 - 1.0) / 7)
    assert math.isnan(weight_stats(w, mask, torch.ones(3))["credit/neg_weight_kept"])

