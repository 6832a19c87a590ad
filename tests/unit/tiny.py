"""Tiny test fixtures: a 2-layer untied Llama and a character-level tokenizer.

Test helper only (not part of the scca package). Does NOT depend on learner/model.py;
it builds its own model so weight/engine tests stay independent of the bootstrap code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]  # ids 0, 1, 2, 3
CHARS = list("0123456789+-*=;#()") + [" ", "\n"]  # every other character maps to <unk>
VOCAB_SIZE = 32  # model vocabulary; >= len(SPECIALS) + len(CHARS) = 24


def tiny_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama in eval mode (deterministic in `seed`)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config())
    # Default init makes the logits nearly uniform; scale the head so sampling and
    # logprobs have some structure (and differ clearly between seeds).
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Char-level WordLevel tokenizer; left padding; decode fuses characters back."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def save_tiny(folder: Path, seed: int = 0) -> Path:
    """Write a plain HF folder (safetensors + config + tokenizer) and return it."""
    folder = Path(folder)
    tiny_model(seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
