"""Padding rule, eos ids and where a completion ends (protocol/tokens.py), and the HF engine
honouring every eos id of generation_config.json and the stop strings."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from actors.engines.hf import HFEngine
from learner.local_models import build_model_folder
from protocol.tokens import RESERVED_PAD_ID, TokenError, completion_length, eos_ids, pad_id, stop_string_end

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """Llama-3 style: the tokenizer's eos is <|end_of_text|>, a chat turn ends with <|eot_id|>,
    listed only in generation_config.json; no pad token."""
    return build_model_folder(tmp_path_factory.mktemp("llama") / "m", "llama", tied=False, seed=5)


def test_pad_falls_back_to_eos_then_a_reserved_id(llama):
    tok = AutoTokenizer.from_pretrained(llama)
    assert tok.pad_token_id is None
    assert pad_id(tok) == tok.eos_token_id
    assert pad_id(SimpleNamespace(pad_token_id=7, eos_token_id=3)) == 7
    assert pad_id(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == RESERVED_PAD_ID


def test_eos_ids_come_from_the_tokenizer_and_both_configs(llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(llama)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eos_ids(tok, llama) == tuple(sorted({tok.eos_token_id, eot}))
    assert eos_ids(tok) == (tok.eos_token_id,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 6]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 9}))
    assert eos_ids(SimpleNamespace(eos_token_id=None), tmp_path) == (5, 6, 9)
    with pytest.raises(TokenError, match="no eos token"):
        eos_ids(SimpleNamespace(eos_token_id=None), tmp_path / "missing")


def test_completion_length_cuts_at_the_first_eos_or_stop_string():
    decode = lambda ids: "".join({1: "ab", 2: "c\n", 3: "\nd", 4: "e", 9: ""}[i] for i in ids)  # noqa: E731
    assert completion_length([1, 4, 9, 4], eos=[9]) == (3, True)
    assert completion_length([1, 4, 4], eos=[9]) == (3, False)
    # "\n\n" spans tokens 2 and 3: the completion ends after token 3, which completes it
    assert completion_length([1, 2, 3, 4, 9], eos=[9], stop=["\n\n"], decode=decode) == (3, True)
    assert stop_string_end([1, 2, 3], ["ab"], decode) == 1
    assert stop_string_end([1, 4], ["zz"], decode) is None
    assert completion_length([1, 9, 2, 3], eos=[9], stop=["\n\n"], decode=decode) == (2, True)  # eos first


def test_hf_engine_stops_at_a_generation_config_eos_and_at_stop_strings(llama, tmp_path):
    tok = AutoTokenizer.from_pretrained(llama)
    prompt = tok("Tom has 3 apples.")["input_ids"]
    free = HFEngine(llama)
    [[greedy]] = free.generate([prompt], 1, temperature=0.0, max_new_tokens=8)
    ids = greedy.token_ids.tolist()
    assert len(ids) == 8 and greedy.finish_reason == "length"  # a random model: no eos in 8 tokens
    # the first greedy token listed as an eos in generation_config.json only
    cfg = json.loads((llama / "generation_config.json").read_text())
    assert ids[0] not in cfg["eos_token_id"] and ids[0] != tok.eos_token_id
    (tmp_path / "m").mkdir()
    for f in llama.iterdir():
        (tmp_path / "m" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({**cfg, "eos_token_id": [*cfg["eos_token_id"], ids[0]]}))
    [[stopped]] = HFEngine(tmp_path / "m").generate([prompt], 1, temperature=0.0, max_new_tokens=8)
    assert stopped.token_ids.tolist() == ids[:1] and stopped.finish_reason == "stop"
    # a stop string completed by the third token: the completion ends there, the string kept
    stop = tok.decode(ids[1:3], skip_special_tokens=True)
    want = next(n for n in range(1, 9) if stop in tok.decode(ids[:n], skip_special_tokens=True))
    [[cut]] = HFEngine(llama, stop=(stop,)).generate([prompt], 1, temperature=0.0, max_new_tokens=8)
    assert cut.token_ids.tolist() == ids[:want] and cut.finish_reason == "stop" and stop in cut.text
