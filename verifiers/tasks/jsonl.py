"""Generic JSONL task files: one JSON object per line.

`read_jsonl` validates every row (an object; the required keys present with the required
types) and fails with the file name and 1-based line number of the first bad row.
Blank lines are skipped (lines are read by `protocol.dataset.json_objects`). `write_jsonl` writes rows as UTF-8, one per line, keys in the
given order, and creates parent directories.

Does NOT: know about any task, stream (files are read whole), or coerce types.
"""

from __future__ import annotations

import json
from pathlib import Path

from protocol.dataset import json_objects


class JsonlError(ValueError):
    """A malformed JSONL file; the message names the file and the line."""


def read_jsonl(path: str | Path, required: dict[str, type | tuple[type, ...]] | None = None
               ) -> list[dict]:
    """Rows of `path`. `required` maps key -> accepted type(s), e.g. {"prompt": str}."""
    rows = []
    for _, where, row in json_objects(path, JsonlError):
        for key, types in (required or {}).items():
            if key not in row:
                raise JsonlError(f"{where}: missing key {key!r}")
            if not isinstance(row[key], types) or isinstance(row[key], bool) and bool not in (
                    types if isinstance(types, tuple) else (types,)):
                raise JsonlError(f"{where}: key {key!r} has type "
                                 f"{type(row[key]).__name__}, expected {_names(types)}")
        rows.append(row)
    return rows


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def write_jsonl(rows, path: str | Path) -> int:
    """Write `rows` (dicts) to `path`; returns the number of rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(f"row {n} is {type(row).__name__}, expected dict")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
