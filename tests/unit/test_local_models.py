"""Every architecture the local builder makes, tied and untied, goes through the weights path
as a downloaded folder would: bf16 snapshot from fp32 master weights, HF engine load,
canonical digest and canary equal on both sides, chat-rendered generation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.engines.hf import HFEngine
from learner.local_models import ARCHS, STYLES, build_model_folder, tied_by_default
from protocol.prompts import PromptRenderer
from protocol.tokens import eos_ids
from protocol.weights import (
    CANARY_TOL,
    canary_logprob,
    folder_dtype,
    load_state_dict,
    param_digest,
    publish_snapshot,
    saved_precision,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_trains_through_the_weights_path(tmp_path, arch, tied):
    folder = build_model_folder(tmp_path / "src", arch, tied=tied, seed=1)
    style = STYLES[ARCHS[arch].style]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert {f.get_slice(n).get_dtype() for n in names} == {"BF16"}
    assert ("lm_head.weight" in names) != tied  # a tied head is stored once, as the embedding
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16" == str(folder_dtype(folder))[6:]
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == style.eos and (tok.pad_token is None) == (style.pad is None)
    assert len(eos_ids(tok, folder)) == 2  # the turn end is listed in generation_config.json
    # learner: fp32 master weights, one optimiser-like change, a bf16 snapshot
    master = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert (master.get_output_embeddings().weight is master.get_input_embeddings().weight) == tied
    with torch.no_grad():
        master.get_input_embeddings().weight.add_(1e-3)
    info = publish_snapshot(tmp_path / "w", 1, master, tok, dtype=torch.bfloat16)
    assert param_digest(load_state_dict(info["folder"]).items()) == info["digest"]
    with saved_precision(master, torch.bfloat16):
        canary = canary_logprob(master, tok)
    assert master.get_input_embeddings().weight.dtype == torch.float32  # master untouched by the snapshot
    # actor: starts from the original folder, reloads the snapshot in place
    engine = HFEngine(folder)
    assert engine.digest() == param_digest(load_file(folder / "model.safetensors").items())
    engine.load_weights(info["folder"], info["manifest_sha256"])
    assert engine.digest() == info["digest"]
    assert abs(engine.canary() - canary) <= CANARY_TOL
    ids = PromptRenderer(tok, "chat", folder=str(folder)).encode("Tom has 3 apples. How many?")
    [[sample]] = engine.generate([ids], 1, temperature=0.0, max_new_tokens=4)
    assert 1 <= len(sample.token_ids) <= 4


def test_builder_defaults_follow_transformers():
    """Gemma-family configs tie by default, Qwen2/Llama/Phi configs do not (Qwen2.5-0.5B sets it)."""
    assert tied_by_default("gemma") and tied_by_default("smollm3")
    assert not tied_by_default("qwen2") and not tied_by_default("llama") and not tied_by_default("phi3")
