"""Users' data files -> prompt rows, through a documented field mapping (DESIGN §7).

Files are read by `protocol.dataset.records`: JSONL, a JSON array, CSV/TSV or Parquet.

Field mapping (`[task] prompt_field` / `answer_field`; empty = the first field present):
  prompt  <- prompt | question (GSM8K) | problem (MATH)
  answer  <- answer (GSM8K, or a plain answer) | solution (MATH)
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
prompt format (protocol/dataset.py), or stream (files are read whole).
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
ANSWER_FIELDS = ("answer", "solution")


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
    lines: list[int] = field(default_factory=list, repr=False)  # source line of each kept row

    def summary(self) -> dict:
        return {"path": self.path, "rows": self.rows, "duplicates_merged": self.duplicates_merged,
                "duplicates_conflicting": self.duplicates_conflicting, "prompt_field": self.prompt_field,
                "answer_field": self.answer_field}


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


def _pick(row: dict, given: str, candidates: tuple[str, ...], what: str, where: str) -> str:
    if given:
        if given not in row:
            raise DataError(f"{where}: missing field {given!r} ([task] {what}_field)")
        return given
    for name in candidates:
        if name in row:
            return name
    raise DataError(f"{where}: no {what} field: expected one of {list(candidates)} (or set [task] {what}_field); "
                    f"the row has {sorted(row)}")


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
    for lineno, where, raw in records(path, DataError):
        pf = _pick(raw, prompt_field, PROMPT_FIELDS, "prompt", where)
        af = _pick(raw, answer_field, candidates, "answer", where)
        report.prompt_field, report.answer_field = pf, af
        prompt, value = raw[pf], raw[af]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: field {pf!r} must be a non-empty string, got {type(prompt).__name__}")
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
        report.lines.append(lineno)
    if not rows:
        raise DataError(f"{path}: no rows")
    report.rows = len(rows)
    return rows, report
