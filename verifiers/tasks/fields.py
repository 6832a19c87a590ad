"""Users' data files -> prompt rows, through a documented field mapping (DESIGN §7).

Files are read by `protocol.dataset.records`: JSONL, a JSON array, CSV/TSV or Parquet, one
file or the shards a glob pattern names (`data/train-*.parquet`).

Field mapping (`[task] prompt_field` / `answer_field`; empty = the first field present; a
dotted name reads into nested maps, e.g. "reward_model.ground_truth"):
  prompt  <- prompt | question (GSM8K) | problem (MATH)
  answer  <- answer (GSM8K, or a plain answer) | solution (MATH) | ground_truth
             | reward_model.ground_truth (verl's parquet files)
A prompt is a string, or chat messages as TRL's conversational format and verl's files
hold them: [{"role": "user", "content": ...}], optionally after one {"role": "system"}
turn. The user turn becomes the prompt text; the system turn must be the same in every
row (the run renders one system prompt, `[task] system_prompt`) and is reported as the
file's `system_prompt` (deploy/preflight.py holds it against the config). Multi-turn
prompts (assistant turns, several user turns) are refused, naming the line.
The gold answer is taken from the answer text (`gold_answer`): the rest of its last
`#### ` line (GSM8K; commas between digits and `$` removed), else the content of its last
`\\boxed{...}` (MATH), else the whole text stripped. When the text holds more than the
gold answer (a worked solution), it is kept as `meta["solution"]` (warm starts and the
SCCA solution bank can use it; actors never see meta).

Rows get the user's own `id` when it is a non-empty string, else `<task>-<sha1(prompt)>`.
Duplicate prompts are merged (the first row is kept) and counted; when their gold answers
differ they are counted as conflicting too. Every error names the file and line: not
JSON, not an object, a missing or mistyped field, an id used for two different prompts.

What it does NOT do: score (the task's scorer does), read files in the learner's generic
prompt format (protocol/dataset.py), stream (files are read whole), or keep per-row system
turns, few-shot turns or tools of chat-message prompts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from protocol.dataset import records
from verifiers.tasks.jsonl import JsonlError

PROMPT_FIELDS = ("prompt", "question", "problem")
ANSWER_FIELDS = ("answer", "solution", "ground_truth", "reward_model.ground_truth")
CHAT_TURNS = (["user"], ["system", "user"])  # the chat-message prompts a row may hold
_MISSING = object()


class DataError(JsonlError):
    """A user's data file that cannot be used; the message names the file and line."""


@dataclass
class Report:
    """What reading one file found (printed by the launcher, kept in run_dir/data/)."""

    path: str
    rows: int = 0
    duplicates_merged: int = 0
    duplicates_conflicting: int = 0
    prompt_field: str = ""
    answer_field: str = ""
    chat_messages: bool = False  # the prompts were given as chat messages
    system_prompt: str = ""  # their system turn ("" when they have none)
    places: list[str] = field(default_factory=list, repr=False)  # "file:line" (or "file: row N") of each kept row

    def summary(self) -> dict:
        return {"path": self.path, "rows": self.rows, "duplicates_merged": self.duplicates_merged,
                "duplicates_conflicting": self.duplicates_conflicting, "prompt_field": self.prompt_field,
                "answer_field": self.answer_field, "chat_messages": self.chat_messages,
                "system_prompt": self.system_prompt}


def gold_answer(text: str) -> str:
    """The gold answer inside an answer/solution text (see the module docstring)."""
    i = text.rfind("####")
    if i >= 0:
        line = text[i + 4:].split("\n", 1)[0].strip()
        return re.sub(r"(?<=\d),(?=\d)", "", line).replace("$", "").rstrip(".").strip()
    j = text.rfind("\\boxed")
    if j >= 0:
        k = text.find("{", j)
        if k >= 0 and not text[j + len("\\boxed"):k].strip():
            depth = 0
            for end in range(k, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    return text[k + 1:end].strip()
    return text.strip()


def field_value(row: dict, name: str) -> object:
    """row[name], else the dotted path into nested maps ("reward_model.ground_truth"), else _MISSING."""
    if name in row:
        return row[name]
    node: object = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _pick(row: dict, given: str, candidates: tuple[str, ...], what: str, where: str) -> str:
    if given:
        if field_value(row, given) is _MISSING:
            raise DataError(f"{where}: missing field {given!r} ([task] {what}_field)")
        return given
    for name in candidates:
        if field_value(row, name) is not _MISSING:
            return name
    raise DataError(f"{where}: no {what} field: expected one of {list(candidates)} (or set [task] {what}_field); "
                    f"the row has {sorted(row)}")


def _prompt(value: object, name: str, where: str) -> tuple[str, str | None]:
    """(prompt text, system turn) of a row's prompt field: a string (system None), or chat
    messages (CHAT_TURNS: the user turn's content, the system turn's or "")."""
    if isinstance(value, list):
        if not value or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                and isinstance(m.get("content"), str) for m in value):
            raise DataError(f"{where}: field {name!r} is a list but not chat messages "
                            '[{"role": str, "content": str}, ...]')
        roles = [m["role"] for m in value]
        if roles not in CHAT_TURNS:
            raise DataError(f"{where}: field {name!r} has the turns {roles}; a prompt is one user turn, "
                            "optionally after one system turn (multi-turn prompts are not supported)")
        value, system = value[-1]["content"], value[0]["content"] if len(value) == 2 else ""
    else:
        system = None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {name!r} must be a non-empty string or chat messages, "
                        f"got {type(value).__name__}")
    return value, system


def _same_system(report: Report, system: str | None, where: str, first: bool) -> None:
    """Every row's prompt has the first row's kind (string or chat messages) and system turn."""
    if first:
        report.chat_messages, report.system_prompt = system is not None, system or ""
    elif (system is not None) != report.chat_messages:
        raise DataError(f"{where}: the file mixes string prompts and chat-message prompts; use one kind")
    elif system is not None and system != report.system_prompt:
        raise DataError(f"{where}: system turn {system[:60]!r} differs from the first row's "
                        f"({report.system_prompt[:60]!r}); a run renders one system prompt ([task] system_prompt)")


def read_rows(path: str | Path, task: str, *, target: str = "answer", prompt_field: str = "",
              answer_field: str = "", row_meta=None) -> tuple[list[dict], Report]:
    """Prompt rows {"id", "prompt", "meta"} of a user's file, and what reading it found.

    target: the meta key the answer-like field fills ("answer": gold answer + solution;
    "tests": the value as is, the only candidate field). row_meta(row,
    where) -> dict adds task-specific meta (may raise DataError).
    """
    path = Path(path)
    report = Report(str(path))
    candidates = ANSWER_FIELDS if target == "answer" else (target,)
    rows: list[dict] = []
    by_prompt: dict[str, str] = {}  # prompt -> its gold answer / tests
    by_id: dict[str, str] = {}  # id -> prompt
    for _, where, raw in records(path, DataError):
        pf = _pick(raw, prompt_field, PROMPT_FIELDS, "prompt", where)
        af = _pick(raw, answer_field, candidates, "answer", where)
        report.prompt_field, report.answer_field = pf, af
        prompt, system = _prompt(field_value(raw, pf), pf, where)
        _same_system(report, system, where, first=not rows)
        value = field_value(raw, af)
        if target == "answer":
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(f"{where}: field {af!r} must be a string or a number, got {type(value).__name__}")
            text = str(value)
            meta = {"answer": gold_answer(text)}
            if meta["answer"] != text.strip():
                meta["solution"] = text
        else:
            meta = {target: value}  # as given; the task's row_meta checks it
        meta.update(row_meta(raw, where) if row_meta else {})
        key = json.dumps(meta.get("answer", value), sort_keys=True)
        if prompt in by_prompt:
            report.duplicates_merged += 1
            report.duplicates_conflicting += by_prompt[prompt] != key
            continue
        rid = raw.get("id") if isinstance(raw.get("id"), str) and raw.get("id") else \
            f"{task}-" + hashlib.sha1(prompt.encode()).hexdigest()[:12]
        if rid in by_id:
            raise DataError(f"{where}: id {rid!r} is already used by another prompt")
        by_prompt[prompt], by_id[rid] = key, prompt
        rows.append({"id": rid, "prompt": prompt, "meta": meta})
        report.places.append(where)
    if not rows:
        raise DataError(f"{path}: no rows")
    report.rows = len(rows)
    return rows, report
