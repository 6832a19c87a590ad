"""Special token ids every engine and the learner agree on: padding, eos, stop strings (DESIGN §4, §7).

What it does:
  * `pad_id(tokenizer)`: the one padding rule of actors and learner. A padded position is
    masked out (attention mask 0) and never a target, so its id only has to exist in the
    vocabulary: the tokenizer's pad token, else its eos token (the convention of
    downloaded Qwen/Llama folders, which ship without a pad token), else RESERVED_PAD_ID.
  * `eos_ids(tokenizer, folder)`: every id that ends a completion — the tokenizer's eos
    plus each `eos_token_id` (an int or a list) of the folder's `generation_config.json`
    and `config.json` (Llama-3 and Qwen instruct models list several there).
  * `completion_length(ids, eos, stop, decode)`: where a sampled completion ends — just
    after its first eos id, or just after the token that completes the first stop string
    (`decode(ids[:t+1])` contains it), whichever comes first; else the whole row. Both
    engines cut with this one function, so they agree on where a completion stops.

What it does NOT do: load tokenizers or models (callers pass them in), choose prompt
formats (protocol/prompts.py), or strip stop strings from completions (the tokens were
sampled, so they are trained on and kept in the text).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

RESERVED_PAD_ID = 0  # any id of the vocabulary works under the attention mask; 0 always exists
MAX_STOP_STRINGS = 16  # stop strings per run (each checked on every generated token)


class TokenError(ValueError):
    """A model folder whose tokenizer / configs cannot end a completion; names the folder."""


def pad_id(tokenizer) -> int:
    """tokenizer.pad_token_id, else tokenizer.eos_token_id, else RESERVED_PAD_ID."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return RESERVED_PAD_ID


def _ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value if v is not None]
    return [int(value)]


def eos_ids(tokenizer, folder: str | Path | None = None) -> tuple[int, ...]:
    """Sorted distinct eos ids of the tokenizer and of the folder's generation/model configs.

    Raises TokenError naming the folder when there is none (generation could never stop).
    """
    ids = set(_ids(tokenizer.eos_token_id))
    if folder is not None:
        for name in ("generation_config.json", "config.json"):
            path = Path(folder) / name
            if path.is_file():
                ids.update(_ids(json.loads(path.read_text()).get("eos_token_id")))
    if not ids:
        raise TokenError(f"model folder {folder}: no eos token in the tokenizer, generation_config.json "
                         "or config.json; generation could never stop")
    return tuple(sorted(ids))


def check_stop_strings(stop: Sequence[str]) -> tuple[str, ...]:
    if len(stop) > MAX_STOP_STRINGS or any(not s for s in stop):
        raise TokenError(f"stop strings: at most {MAX_STOP_STRINGS}, none empty; got {list(stop)!r}")
    return tuple(stop)


def stop_string_end(ids: Sequence[int], stop: Iterable[str], decode: Callable[[list[int]], str]) -> int | None:
    """Smallest t + 1 such that decode(ids[:t+1]) contains a stop string, or None.

    Binary search: a prefix that contains a stop string stays containing it as it grows.
    """
    stop = tuple(stop)
    if not stop or not ids:
        return None
    has = lambda n: any(s in decode(list(ids[:n])) for s in stop)  # noqa: E731
    if not has(len(ids)):
        return None
    lo, hi = 1, len(ids)  # has(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if has(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def completion_length(ids: Sequence[int], eos: Iterable[int], stop: Iterable[str] = (),
                      decode: Callable[[list[int]], str] | None = None) -> tuple[int, bool]:
    """(T, stopped): the completion is ids[:T]; stopped = it ended on an eos id or a stop string.

    T = min(first eos index + 1, stop_string_end), or len(ids) when neither occurs.
    """
    eos = set(eos)
    end = next((t + 1 for t, i in enumerate(ids) if int(i) in eos), None)
    if stop and decode is not None:
        s_end = stop_string_end(ids[: end or len(ids)], stop, decode)
        if s_end is not None:
            end = s_end
    return (len(ids), False) if end is None else (end, True)
