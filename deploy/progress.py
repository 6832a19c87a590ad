"""Progress of `scca run` on a terminal and without one (nohup, Slurm, CI logs).

What it does: `ProgressView` follows the learner's log. On a terminal it keeps a live rich
table (step, samples, samples/s, reward, held-out accuracy, lag, no-signal and stale
drops, peers, elapsed, ETA, status) from the learner's `progress.json` (learner/progress.py
fields). Without one it prints the learner's own plain progress lines, timestamped: one
per step, and one per `[monitor] progress_every_s` while no step completes. In both
modes it echoes the learner's WARNING and ERROR log lines (stall warnings, quarantines,
peers dropped) as they appear, and `child_exited` reports an actor or verifier that
exits badly with its last log lines.

What it does not do: it computes no metric (the learner does) and never stops anything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from deploy.report import exit_report
from learner.progress import TABLE_COLUMNS, table_row

ECHO_MARKERS = (" WARNING ", " ERROR ")  # learner log lines shown to the user as they appear
PROGRESS_MARKER = " progress: "  # the learner's progress lines (one per step, and per progress_every_s)
ECHO_MAX_CHARS = 1000


class LogFollower:
    """New lines of a growing log file since the last call, from byte `offset` on (lines of
    an earlier session of a resumed run are not new)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset, self.partial = Path(path), offset, ""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", "replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        return lines


class ProgressView:
    def __init__(self, run_dir: Path, cfg, console: Console, log_offset: int = 0, tty: bool | None = None):
        self.run_dir, self.cfg, self.console = Path(run_dir), cfg, console
        self.tty = console.is_terminal if tty is None else tty
        self.follower = LogFollower(self.run_dir / "logs" / "learner.log", log_offset)
        self.live: Live | None = None
        self.reported: set[str] = set()

    def __enter__(self) -> ProgressView:
        if self.tty:
            self.live = Live(self.table(None), console=self.console, refresh_per_second=1, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def fields(self) -> dict | None:
        try:
            return json.loads((self.run_dir / "progress.json").read_text())
        except (OSError, ValueError):
            return None

    def table(self, fields: dict | None) -> Table:
        table = Table(title=f"scca run {self.run_dir.name}")
        for col in TABLE_COLUMNS:
            table.add_column(col, justify="right")
        if fields is not None:
            table.add_row(*table_row(fields))
        return table

    def update(self) -> None:
        for line in self.follower.new_lines():
            if any(m in line for m in ECHO_MARKERS):
                self.say(line[:ECHO_MAX_CHARS])
            elif self.live is None and PROGRESS_MARKER in line:  # the learner's own line, timestamped
                self.say(f"{line[:19]} {line.split(PROGRESS_MARKER, 1)[1]}")
        if self.live is not None:
            self.live.update(self.table(self.fields()))

    def say(self, text: str) -> None:
        """A line above the live table on a terminal; a plain, unwrapped line otherwise."""
        if self.live is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def child_exited(self, name: str, returncode: int, log_path: Path) -> None:
        """Report a service that ended on its own (once); exit 0 is a normal end."""
        if name in self.reported or returncode == 0:
            return
        self.reported.add(name)
        self.say(exit_report(name, returncode, log_path))
