"""The learner's prompts: read the prompt files, render every prompt once, check its length.

What it does: `load_prompts` reads the train and held-out prompt files, renders each
prompt with the run's format (protocol/prompts.py: raw or the tokenizer's chat template)
and stores the ids in `row["token_ids"]` (int32); the hub sends them in `work` so actors
generate from exactly the ids the trainer and teacher pass use. A prompt over the
maximum length is an error naming its file and line, or dropped and counted
(`[task] long_prompts`). `format_record` is what `prompt_format.json` in the run folder
keeps: the resolved format, an example rendering, eos/pad ids, the snapshot dtype.

What it does NOT do: convert users' files (deploy/ and verifiers/tasks do that before any
process starts) or sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol.dataset import read_jsonl
from protocol.prompts import PromptRenderer, encode_rows, max_prompt_tokens
from protocol.tokens import eos_ids, pad_id

log = logging.getLogger("scca.learner")


@dataclass
class Prompts:
    renderer: PromptRenderer
    train: list[dict]
    heldout: list[dict]
    limit: int | None
    dropped: dict[str, int] = field(default_factory=dict)  # split -> prompts dropped as too long


def _load_split(path: str, renderer: PromptRenderer, limit: int | None, policy: str) -> tuple[list[dict], int]:
    lines: list[int] = []
    rows = read_jsonl(path, lines)
    kept, ids, dropped = encode_rows(rows, renderer, limit, policy, lambda i: f"{path}:{lines[i]}")
    for row, p in zip(kept, ids):
        row["token_ids"] = np.asarray(p, dtype=np.int32)
    if not kept:
        raise ValueError(f"{path}: every prompt is longer than {limit} tokens")
    return kept, dropped


def load_prompts(cfg, tokenizer, folder: Path) -> Prompts:
    """Rendered train and held-out prompts of the run (see the module docstring)."""
    task = cfg.task
    renderer = PromptRenderer.for_task(tokenizer, task, folder)
    limit = max_prompt_tokens(task.max_prompt_tokens, folder, cfg.actor.max_new_tokens)
    train, n_train = _load_split(task.train_file, renderer, limit, task.long_prompts)
    heldout, n_held = _load_split(task.heldout_file, renderer, limit, task.long_prompts)
    if n_train or n_held:
        log.warning("dropped prompts over %s tokens: %d train, %d held-out", limit, n_train, n_held)
    return Prompts(renderer, train, heldout, limit, {"train": n_train, "heldout": n_held})


def format_record(prompts: Prompts, tokenizer, folder: Path, save_dtype: str) -> dict:
    """prompt_format.json: how prompts reach the model in this run."""
    return {**prompts.renderer.record(prompts.train[0]["prompt"]), "max_prompt_tokens": prompts.limit,
            "dropped_too_long": prompts.dropped, "eos_ids": list(eos_ids(tokenizer, folder)),
            "pad_id": pad_id(tokenizer), "snapshot_dtype": save_dtype}
