"""Errors where you look: what `scca run` prints when one of its processes exits badly.

What it does: `tail_lines` reads the last lines of a log without loading it whole;
`one_line_reason` picks the line that says why a process ended — the learner's own
`run ended (...)` line, else the last exception line of a traceback (`ValueError: ...`),
else the last ERROR line, else the last line; `exit_report` puts the process name, its
exit status (a signal named as such), that reason and the log's last lines together.

What it does not do: it parses no log format beyond those markers and keeps no state.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

TAIL_LINES = 20  # log lines shown with a failure
TAIL_BYTES = 64 * 1024  # read at most this much from the end of a log

_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")  # a traceback's last line


def tail_lines(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[-n:] if size <= TAIL_BYTES else lines[1:][-n:]  # the first line may be cut


def one_line_reason(lines: list[str]) -> str:
    for line in reversed(lines):
        if "run ended (" in line:
            return line.split("run ended ", 1)[1].strip()
    for line in reversed(lines):
        if _EXCEPTION.match(line.strip()):
            return line.strip()
    for line in reversed(lines):
        if " ERROR " in line or line.startswith("scca: "):
            return line.strip()
    return lines[-1].strip() if lines else "(empty log)"


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with {returncode}"


def exit_report(name: str, returncode: int, log_path: Path, reason: str | None = None) -> str:
    """`NAME exited with N: REASON` + the last lines of its log."""
    lines = tail_lines(log_path)
    reason = reason or one_line_reason(lines)
    body = "\n".join(f"  | {line}" for line in lines)
    return f"{name} {describe_status(returncode)}: {reason}\n  last lines of {log_path}:\n{body}"
