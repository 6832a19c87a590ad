"""Prompt files: the JSONL format every task reads and writes (DESIGN §7).

What it does: one JSON object per line, `{"id": str, "prompt": str, "meta": {...}}`.
`meta` holds what only verifiers may see (answer, tests, reference solution); the learner
passes it through untouched and actors never receive it. `read_jsonl` validates every
row and names the line of the first bad one. `json_objects` is the one line reader every
JSONL file of the project goes through (prompt files here, a task's own files and a user's
data files in verifiers/tasks): blank lines skipped, each error names `file:line`.
`records` reads a user's data file in the formats datasets come in, chosen by suffix:
JSONL (any other suffix), `.json` (one array of objects, or JSON Lines under a .json name),
`.csv` / `.tsv` (a header row; every value a string) and `.parquet` (with pyarrow, an
optional dependency: `pip install pyarrow`). Its errors name `file:line` (JSONL, CSV: the
line the record starts on) or `file: item N` / `file: row N` (JSON arrays, Parquet; 1-based).
A data path may be a glob pattern naming several files, as datasets come in shards
(`data/train-*.parquet`): `data_files` expands it, sorted by name, and `records` reads them
in that order as one dataset, each error naming its own file. A folder is refused with a
hint (a dataset folder often holds several splits: name the files of one).

What it does not do: no streaming of huge files (rows are held in memory), no schema for
`meta` (each task's scorer owns its own), no nested Parquet columns beyond what
`pyarrow.Table.to_pylist` gives, no spreadsheet formats.
"""

from __future__ import annotations

import csv
import glob
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
    A line that is not JSON, or not a JSON object, raises `error` naming file:line. A UTF-8
    byte-order mark (Windows editors write one) is skipped, as `records` does for every format."""
    with open(path, encoding="utf-8-sig") as f:
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


GLOB_CHARS = "*?["  # a data path holding one of these (and naming no file) is a glob pattern


def data_files(path: str | Path, error: type[Exception] = DatasetError) -> list[Path]:
    """The files a data path names: itself, or the files its glob pattern matches (sorted by
    name, at least one). A folder raises `error` with a hint; a missing file is left to the
    reader (opening it says so)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{path}: is a folder; name its files, e.g. {p / 'train-*.parquet'} (a glob pattern) "
                    "or one file (a dataset folder may hold several splits)")
    if p.exists() or not any(c in str(path) for c in GLOB_CHARS):
        return [p]
    files = sorted(Path(f) for f in glob.glob(str(path)) if Path(f).is_file())
    if not files:
        raise error(f"{path}: no file matches this pattern")
    return files


def records(path: str | Path, error: type[Exception] = DatasetError) -> Iterator[tuple[int, str, dict]]:
    """(1-based line or item number in its file, where-string for errors, object) of every
    record of a user's data file, or of the files its glob pattern names, in the format each
    file's suffix names (module docstring)."""
    for file in data_files(path, error):
        yield from _file_records(file, error)


def _file_records(path: Path, error: type[Exception]) -> Iterator[tuple[int, str, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return _csv_records(path, "\t" if suffix == ".tsv" else ",", error)
    if suffix == ".parquet":
        return _parquet_records(path, error)
    if suffix == ".json" and _starts_with(path, "["):
        return _json_array_records(path, error)
    return json_objects(path, error)


def _starts_with(path: str | Path, char: str) -> bool:
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    return head.startswith(char)


def _json_array_records(path: str | Path, error: type[Exception]) -> Iterator[tuple[int, str, dict]]:
    try:
        items = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for i, item in enumerate(items, start=1):
        where = f"{path}: item {i}"
        if not isinstance(item, dict):
            raise error(f"{where}: expected a JSON object, got {type(item).__name__}")
        yield i, where, item


def _csv_records(path: str | Path, delimiter: str, error: type[Exception]) -> Iterator[tuple[int, str, dict]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames or any(not (name or "").strip() for name in reader.fieldnames):
            raise error(f"{path}:1: expected a header row naming every column, got {reader.fieldnames}")
        start = 2  # the line the next record starts on (a quoted value may span lines)
        for row in reader:
            where = f"{path}:{start}"
            got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
            if got != len(reader.fieldnames):  # DictReader files surplus values under None, fills gaps with None
                raise error(f"{where}: expected {len(reader.fieldnames)} columns as in the header, got {got}")
            yield start, where, row
            start = reader.line_num + 1


def _parquet_records(path: str | Path, error: type[Exception]) -> Iterator[tuple[int, str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise error(f"{path}: reading Parquet needs pyarrow (`pip install pyarrow`), or convert the file to "
                    "JSONL first") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise error(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    for i, row in enumerate(rows, start=1):
        yield i, f"{path}: row {i}", row


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


def prompt_file_rows(path: str | Path) -> list[dict] | None:
    """The rows of `path` if it is a valid prompt file in the learner's format (what `scca run`
    writes to run_dir/data/ and `scca data --from` converts to), else None: a task's own
    file (GSM8K, verl, ...) fails on its first row, so this costs one line to find out."""
    try:
        return read_jsonl(path)
    except (DatasetError, OSError, UnicodeDecodeError):
        return None


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            check_row(row, f"row {i}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
