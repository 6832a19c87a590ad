"""The default tiny model of scca and its character-level tokenizer.

What it does:
  * `build_tokenizer()` makes a character-level `PreTrainedTokenizerFast` (WordLevel over
    `CHARS` plus `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3). Every encoded text gets a
    leading `<bos>` (TemplateProcessing); padding is on the left (saved with the folder);
    `decode(ids, skip_special_tokens=True)` gives back the exact text (Fuse decoder, no
    spaces inserted, no clean-up of spaces).
  * `build_tiny_model(seed)` makes a ~2M-parameter `LlamaForCausalLM` with untied
    embeddings (a choice of the tiny model; tied models train too, DESIGN §4).
  * `save_model_folder(...)` writes an HF folder (safetensors) that
    `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` load back.

What it does NOT do: train (see `learner/bootstrap.py`), or know any task.
A character outside `CHARS` encodes to `<unk>` and is lost on decode.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3 in this order
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

CHARS = (
    string.digits
    + "+-*/=;#().,:? \n"
    + string.ascii_lowercase
    + string.ascii_uppercase
    + "_"
)

# Default architecture (~2.0M parameters with the 81-token vocabulary).
HIDDEN_SIZE = 192
NUM_LAYERS = 4
NUM_HEADS = 4
INTERMEDIATE_SIZE = 512
MAX_POSITIONS = 256
INIT_STD = 0.02


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer; left padding; `<bos>` prepended to every text."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARS:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # "[\s\S]": every single character, newline included, as its own piece.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B",
        special_tokens=[(BOS, BOS_ID)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


def build_tiny_model(seed: int) -> LlamaForCausalLM:
    """A freshly initialised ~2M-parameter Llama; same seed -> identical weights."""
    vocab_size = len(SPECIAL_TOKENS) + len(CHARS)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    return model


def save_model_folder(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path | str
) -> Path:
    """Write model (safetensors) + tokenizer to `folder`; check the tokenizer reloads.

    Raises RuntimeError if the reloaded tokenizer does not pad left or does not
    round-trip a probe text.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    probe = "Reference solution:\n47+85=132;#151\n\n47+85+19="
    back = reloaded.decode(reloaded(probe)["input_ids"], skip_special_tokens=True)
    if reloaded.padding_side != "left" or back != probe:
        raise RuntimeError(
            f"tokenizer in {folder} does not reload faithfully: "
            f"padding_side={reloaded.padding_side!r}, round trip {back!r}"
        )
    return folder


def load_model_folder(folder: Path | str) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Load a folder written by `save_model_folder` (model in float32, eval mode)."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)
