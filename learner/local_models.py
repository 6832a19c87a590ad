"""Small random Hugging Face model folders of real architectures, built locally (no download).

What it does: `build_model_folder(out, arch)` writes a folder exactly as downloaded ones
come — `config.json` + `model.safetensors` in the given dtype (bf16 by default),
`generation_config.json` with a LIST of eos ids and sampling defaults (temperature, top-k,
repetition penalty: engines must ignore them), and a byte-level BPE tokenizer trained in
seconds with `tokenizers` on local text, with a chat template and its special tokens
appended after the learned vocabulary (the model's vocabulary is larger than the
tokenizer's, as in Qwen). The chat style follows the architecture's family:

  style    eos of the tokenizer   extra eos in generation_config   pad      bos
  chatml   <|im_end|>             <|endoftext|>                    none     none   (Qwen2.5 instruct)
  llama3   <|end_of_text|>        <|eot_id|> (ends a chat turn)    none     <|begin_of_text|>
  gemma    <eos>                  <end_of_turn>                    <pad>    <bos>
  phi3     <|endoftext|>          <|end|>                          none     none

`ARCHS` names every architecture checked (`tied_by_default` says whether transformers ties
its embeddings by default); tests/unit/test_local_models.py builds each tied and untied.

What it does NOT do: train (see learner/warm_start.py) or download anything. The weights
are random (std 0.02 init, seeded); only the tokenizer and the layout are realistic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from protocol.weights import save_model

QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Qwen2: every digit its own piece
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # Llama 3: up to 3 digits per piece
VOCAB_MULTIPLE = 64  # the model's vocabulary is the tokenizer's rounded up to this
HEAD_DIM = 32  # the smallest head size vLLM's CPU attention supports
TEMPLATE_WORD_REPEATS = 200  # copies of the chat template's words added to the BPE corpus
DEFAULT_SYSTEM = "You are a helpful assistant."

CHATML = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
          "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
          "{%- endif %}{%- for message in messages %}{%- if message['role'] != 'system' %}{{- '<|im_start|>' + "
          "message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\\n\\n' %}"
         "{% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}"
         "{% for message in msgs %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
         "{{ '<start_of_turn>' + role + '\\n' + (sys if loop.first else '') + message['content'] + "
         "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")
PHI3 = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")


@dataclass(frozen=True)
class ChatStyle:
    template: str
    specials: tuple[str, ...]  # appended after the learned vocabulary, in this order
    eos: str  # the tokenizer's eos token
    extra_eos: tuple[str, ...]  # further eos tokens listed in generation_config.json
    bos: str | None = None  # prepended to every encoding by the tokenizer (post-processor)
    pad: str | None = None
    split: str = QWEN_SPLIT


STYLES = {
    "chatml": ChatStyle(CHATML, ("<|endoftext|>", "<|im_start|>", "<|im_end|>"), "<|im_end|>", ("<|endoftext|>",)),
    "llama3": ChatStyle(LLAMA3, ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                 "<|eot_id|>"), "<|end_of_text|>", ("<|eot_id|>",), bos="<|begin_of_text|>",
                        split=LLAMA3_SPLIT),
    "gemma": ChatStyle(GEMMA, ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<eos>",
                       ("<end_of_turn>",), bos="<bos>", pad="<pad>", split=LLAMA3_SPLIT),
    "phi3": ChatStyle(PHI3, ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), "<|endoftext|>",
                      ("<|end|>",), split=LLAMA3_SPLIT),
}


@dataclass(frozen=True)
class Arch:
    model_type: str  # transformers' AutoConfig name
    style: str  # key of STYLES
    extra: dict = field(default_factory=dict)  # config fields this architecture needs


ARCHS = {
    "qwen2": Arch("qwen2", "chatml"),
    "qwen3": Arch("qwen3", "chatml", {"head_dim": None}),
    "llama": Arch("llama", "llama3"),
    "mistral": Arch("mistral", "llama3", {"head_dim": None, "sliding_window": None}),
    "gemma": Arch("gemma", "gemma", {"head_dim": None}),
    "gemma2": Arch("gemma2", "gemma", {"head_dim": None, "sliding_window": 64}),
    "gemma3": Arch("gemma3_text", "gemma", {"head_dim": None, "sliding_window": 64}),
    "phi": Arch("phi", "phi3"),
    "phi3": Arch("phi3", "phi3"),
    "olmo2": Arch("olmo2", "chatml"),
    "smollm3": Arch("smollm3", "chatml"),
    "granite": Arch("granite", "chatml"),
    "stablelm": Arch("stablelm", "chatml"),
}


def tied_by_default(arch: str) -> bool:
    """Whether transformers' default config of `arch` ties input and output embeddings."""
    return bool(getattr(AutoConfig.for_model(ARCHS[arch].model_type), "tie_word_embeddings", False))


BUILTIN_CORPUS = (
    "Tom has 12 apples. He buys 7 more apples. How many apples does Tom have now? 12 + 7 = 19.",
    "A farmer packs 36 eggs into boxes of 6 eggs each. How many boxes does she fill? 36 / 6 = 6.",
    "The quick brown fox jumps over the lazy dog. Reference solution: the answer is 42.",
    "Let x = 3 and y = 4. Then x * y - 5 = 7, and (x + y) * 2 = 14. #### 14",
)


def train_tokenizer(style: ChatStyle, corpus: Iterable[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`; the style's special tokens appended after it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(style.split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    # the template's own words, so that turn markers are a few tokens (as in a real tokenizer)
    template_words = [DEFAULT_SYSTEM + " system user assistant model\n\n"] * TEMPLATE_WORD_REPEATS
    tok.train_from_iterator(list(corpus) + template_words, trainer)
    tok.add_special_tokens(list(style.specials))
    if style.bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{style.bos} $A", pair=f"{style.bos} $A $B", special_tokens=[(style.bos, tok.token_to_id(style.bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=style.eos, bos_token=style.bos, pad_token=style.pad,
        chat_template=style.template, model_max_length=max_length, clean_up_tokenization_spaces=False)


def build_model_folder(
    out: str | Path,
    arch: str = "qwen2",
    *,
    tied: bool = True,
    dtype: str = "bfloat16",
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    tokenizer_vocab: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    head_dim: int = HEAD_DIM,
    intermediate_size: int | None = None,
    max_positions: int = 512,
) -> Path:
    """Write a random `arch` model + trained tokenizer + generation config to `out`; return it.

    hidden_size / head_dim attention heads (half as many key/value heads, at least one);
    intermediate_size defaults to 2 * hidden_size.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if hidden_size % head_dim:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of head_dim {head_dim}")
    heads = hidden_size // head_dim
    kv_heads = max(1, heads // 2)
    intermediate_size = intermediate_size or 2 * hidden_size
    spec, out = ARCHS[arch], Path(out)
    style = STYLES[spec.style]
    tokenizer = train_tokenizer(style, corpus or BUILTIN_CORPUS, tokenizer_vocab, max_positions)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in style.specials}
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    extra = {k: (head_dim if k == "head_dim" else v) for k, v in spec.extra.items()}
    config = AutoConfig.for_model(
        spec.model_type, vocab_size=vocab, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=tied, initializer_range=0.02,
        bos_token_id=ids.get(style.bos), eos_token_id=ids[style.eos], pad_token_id=ids.get(style.pad), **extra)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids.get(style.bos), pad_token_id=ids.get(style.pad),
        eos_token_id=[ids[style.eos]] + [ids[t] for t in style.extra_eos],
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out, getattr(torch, dtype))
    tokenizer.save_pretrained(out)
    (out / "scca_model.json").write_text(json.dumps(
        {"arch": arch, "tied": tied, "dtype": dtype, "seed": seed, "style": spec.style,
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2))
    return out
