"""Checks `scca run` makes before any process starts, so bad input fails in the terminal, in one line.

What it does, on the prepared run (prompt rows in memory, each with the place it came
from, e.g. the user's `gsm8k.jsonl:17`):
  * the plug-in reward (`[task] reward`) imports and is callable (verifiers/plugin.py);
  * the model folder's tokenizer renders every prompt in the run's format
    (protocol/prompts.py: a chat model without a template is an error naming the
    folder), and no prompt is longer than the maximum unless `long_prompts = "drop"`
    (then the count is reported), and it has an eos id (protocol/tokens.py).

What it does NOT do: load the model's weights, or check anything the learner cannot
know before it runs (peers, weights versions). The learner repeats the length check on
its own prompt files (it may be started alone with `scca learner`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protocol.config import ConfigError, RunConfig
from protocol.prompts import PromptFormatError, PromptRenderer, encode_rows, max_prompt_tokens
from protocol.tokens import TokenError, eos_ids


def model_folder(cfg: RunConfig) -> Path:
    return Path(cfg.model.folder or cfg.model.bootstrap_dir)


def check_reward(cfg: RunConfig) -> None:
    if cfg.task.reward:
        from verifiers.plugin import load_reward  # deploy may import every package

        load_reward(cfg.task.reward)


def check_prompts(cfg: RunConfig, splits: dict[str, tuple[list[dict], Callable[[int], str]]]) -> dict[str, int]:
    """Render every split's rows; {split: prompts over the maximum (dropped by the learner)}.

    splits: {name: (rows, where)} with where(i) naming row i ("file:line").
    A folder without a tokenizer yet (a bootstrap still to be built) is not checked here.
    Raises ConfigError with one line naming the folder or the file and line.
    """
    folder = model_folder(cfg)
    if not (folder / "tokenizer_config.json").is_file():
        return {}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        eos_ids(tokenizer, folder)
        renderer = PromptRenderer(tokenizer, cfg.task.prompt_format, cfg.task.system_prompt, folder=str(folder))
        limit = max_prompt_tokens(cfg.task.max_prompt_tokens, folder, cfg.actor.max_new_tokens)
        return {name: encode_rows(rows, renderer, limit, cfg.task.long_prompts, where)[2]
                for name, (rows, where) in splits.items()}
    except (PromptFormatError, TokenError) as exc:
        raise ConfigError(str(exc)) from None
