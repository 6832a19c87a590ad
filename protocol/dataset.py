"""Prompt files: the JSONL format every task reads and writes (DESIGN §7).

What it does: one JSON object per line, `{"id": str, "prompt": str, "meta": {...}}`.
`meta` holds what only verifiers may see (answer, tests, reference solution); the learner
passes it through untouched and actors never receive it. `read_jsonl` validates every
row and names the line of the first bad one. `json_objects` is the one line reader every
JSONL file of the project goes through (prompt files here, a task's own files and a user's
data files in verifiers/tasks): blank lines skipped, each error names `file:line`.

What it does not do: no streaming of huge files (rows are held in memory), no schema for
`meta` (each task's scorer owns its own).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

MAX_PROMPT_CHARS = 65_536  # matches the wire limit on prompt text


class DatasetError(ValueError):
    """A prompt file that cannot be used; the message names the file and line."""


def check_row(row: object, where: str) -> dict:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, typ in (("id", str), ("prompt", str), ("meta", dict)):
        if not isinstance(row.get(key), typ):
            hint = (" (a task's own JSONL such as GSM8K? `scca run` converts it; for `scca learner` run "
                    "`scca data TASK --from FILE --out PROMPTS.jsonl` first)") if "meta" not in row else ""
            raise DatasetError(f"{where}: field {key!r} must be {typ.__name__}, got {type(row.get(key)).__name__}{hint}")
    extra = set(row) - {"id", "prompt", "meta"}
    if extra:
        raise DatasetError(f"{where}: unknown fields {sorted(extra)}")
    if not row["id"] or len(row["prompt"]) > MAX_PROMPT_CHARS:
        raise DatasetError(f"{where}: empty id or prompt over {MAX_PROMPT_CHARS} chars")
    return row


def json_objects(path: str | Path, error: type[Exception] = DatasetError) -> Iterator[tuple[int, str, dict]]:
    """(1-based line number, "file:line", object) of every non-blank line of a JSONL file.
    A line that is not JSON, or not a JSON object, raises `error` naming file:line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield lineno, where, row


def read_jsonl(path: str | Path, lines: list[int] | None = None) -> list[dict]:
    """Validated rows of a prompt file; `lines`, if given, receives each row's 1-based line number."""
    rows, seen = [], set()
    for n, where, row in json_objects(path):
        row = check_row(row, where)
        if row["id"] in seen:
            raise DatasetError(f"{where}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        rows.append(row)
        if lines is not None:
            lines.append(n)
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            check_row(row, f"row {i}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
