"""Prompt formats: how a prompt text becomes the token ids the policy sees (DESIGN §7).

One place decides it for actors, learner, teacher pass and evaluation. The learner
renders every prompt once (`PromptRenderer.encode`) and sends the ids in `work`, so actors
generate from exactly the ids the learner trains on; the teacher pass renders its
reference-in-context prompt through the same renderer.

Formats (a registry: a new format is a new function plus one entry):
  raw   tokenizer(text): the text as is, with the special tokens the tokenizer adds
        itself (e.g. <bos>);
  chat  tokenizer.apply_chat_template([{system}, {"role": "user", "content": text}],
        add_generation_prompt=True, **template_kwargs) rendered to a string, then tokenised
        with add_special_tokens=False (the template writes <bos> and the like itself).
        `template_kwargs` (`[task] chat_template_kwargs`) are the template's own variables,
        e.g. Qwen3's `enable_thinking = false` (no thinking block: an empty one is written
        after the generation prompt).

Prompt length: `encode_rows` renders a list of prompt rows and checks each against the
maximum (`max_prompt_tokens`; 0 = the model's context minus the completion budget). A
longer prompt is an error naming the file and line, or, with `long_prompts = "drop"`,
dropped and counted. Prompts are never truncated.

What it does NOT do: sample, pad (protocol/tokens.py), or read data files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class PromptFormatError(ValueError):
    """A prompt that cannot be rendered or does not fit; names the folder or file:line."""


# Arguments of apply_chat_template that scca sets itself: not template variables.
RESERVED_TEMPLATE_KWARGS = frozenset({"conversation", "messages", "tools", "documents", "chat_template", "tokenize",
                                      "add_generation_prompt", "continue_final_message", "return_dict",
                                      "return_tensors", "padding", "truncation", "max_length", "tokenizer_kwargs",
                                      "return_assistant_tokens_mask"})


def render_raw(tokenizer, texts: Sequence[str], system_prompt: str, template_kwargs: dict) -> list[list[int]]:
    """tokenizer(text)["input_ids"] for each text (batched: one call)."""
    if system_prompt or template_kwargs:
        raise PromptFormatError("a system prompt or chat template variables need prompt_format = 'chat'")
    return [list(ids) for ids in tokenizer(list(texts))["input_ids"]]


def chat_text(tokenizer, text: str, system_prompt: str, **template_kwargs) -> str:
    """The chat template applied to one user turn (after an optional system turn)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **template_kwargs)


def render_chat(tokenizer, texts: Sequence[str], system_prompt: str, template_kwargs: dict) -> list[list[int]]:
    rendered = [chat_text(tokenizer, t, system_prompt, **template_kwargs) for t in texts]
    return [list(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]


FORMATS: dict[str, Callable[[object, Sequence[str], str, dict], list[list[int]]]] = {
    "raw": render_raw,
    "chat": render_chat,
}


def model_context(folder: str | Path) -> int | None:
    """max_position_embeddings (or n_positions / max_sequence_length) of the folder's config.json."""
    import json

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    cfg = cfg.get("text_config", cfg)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    return None


@dataclass(frozen=True)
class PromptRenderer:
    """A tokenizer plus a format: `encode(text)` gives the prompt's token ids."""

    tokenizer: object
    format: str = "raw"
    system_prompt: str = ""
    folder: str = ""  # for error messages and the record
    template_kwargs: tuple[tuple[str, object], ...] = ()  # chat template variables, e.g. (("enable_thinking", False),)
    _fn: Callable = field(init=False, repr=False, compare=False)

    @classmethod
    def for_task(cls, tokenizer, task, folder: str | Path) -> "PromptRenderer":
        """The renderer of a run's `[task]` section (format, system prompt, template variables)."""
        return cls(tokenizer, task.prompt_format, task.system_prompt, folder=str(folder),
                   template_kwargs=tuple(sorted(task.chat_template_kwargs.items())))

    def __post_init__(self):
        if self.format not in FORMATS:
            raise PromptFormatError(f"unknown prompt_format {self.format!r}; known: {sorted(FORMATS)}")
        if self.format == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise PromptFormatError(
                f"model folder {self.folder or '?'} has no chat template (tokenizer_config.json / "
                "chat_template.jinja), but [task] prompt_format = 'chat'; add a template or use 'raw'")
        if self.format == "raw" and (self.system_prompt or self.template_kwargs):
            raise PromptFormatError("[task] system_prompt and chat_template_kwargs need prompt_format = 'chat'")
        reserved = sorted(RESERVED_TEMPLATE_KWARGS & {k for k, _ in self.template_kwargs})
        if reserved:
            raise PromptFormatError(f"[task] chat_template_kwargs: {reserved} are set by scca, not template variables")
        object.__setattr__(self, "_fn", FORMATS[self.format])

    def encode(self, text: str) -> list[int]:
        return self.encode_many([text])[0]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return self._fn(self.tokenizer, texts, self.system_prompt, dict(self.template_kwargs)) if texts else []

    def record(self, example: str) -> dict:
        """What the run folder keeps about the resolved format (prompt_format.json)."""
        template = getattr(self.tokenizer, "chat_template", None) or ""
        ids = self.encode(example)
        return {"format": self.format, "system_prompt": self.system_prompt, "folder": self.folder,
                "chat_template_kwargs": dict(self.template_kwargs),
                "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template else None,
                "example_prompt": example, "example_rendered": self.tokenizer.decode(ids), "example_token_ids": ids}


def max_prompt_tokens(configured: int, folder: str | Path, max_new_tokens: int) -> int | None:
    """The configured maximum, else the model's context minus the completion budget (None: unknown)."""
    if configured:
        return configured
    context = model_context(folder)
    return None if context is None else max(1, context - max_new_tokens)


def encode_rows(rows: list[dict], renderer: PromptRenderer, limit: int | None, long_prompts: str,
                where: Callable[[int], str]) -> tuple[list[dict], list[list[int]], int]:
    """(kept rows, their token ids, number dropped as too long).

    where(i) names row i for an error ("file:line"). long_prompts: "error" raises
    PromptFormatError at the first prompt over `limit` tokens; "drop" drops and counts it.
    """
    if long_prompts not in ("error", "drop"):
        raise PromptFormatError(f"long_prompts must be 'error' or 'drop', got {long_prompts!r}")
    ids = renderer.encode_many([r["prompt"] for r in rows])
    kept, kept_ids, dropped = [], [], 0
    for i, (row, p) in enumerate(zip(rows, ids)):
        if limit is not None and len(p) > limit:
            if long_prompts == "error":
                raise PromptFormatError(
                    f"{where(i)}: prompt is {len(p)} tokens in format {renderer.format!r}, over the maximum "
                    f"{limit} ([task] max_prompt_tokens; 0 = model context - max_new_tokens); prompts are never "
                    "truncated: shorten it, raise the maximum, or set [task] long_prompts = 'drop'")
            dropped += 1
            continue
        kept.append(row)
        kept_ids.append(p)
    return kept, kept_ids, dropped
