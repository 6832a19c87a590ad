"""What `scca run` checks before it starts any process (and `scca doctor` reuses).

What it does: `check_run_dir` refuses `--out` at a folder that already holds something
unless `--resume` (a finished run would otherwise be appended to and stall), and for
`--resume` names what is missing (the folder, its config, its checkpoint);
`check_inputs` reads every data file the config names the way the learner will (a
generic prompt file, or the task's own JSONL reader) and a given model folder, so a bad
row is reported as `FILE:LINE: problem` in the terminal, not as a traceback in a
learner log. Every problem is an `InputError` (a ConfigError: the CLI prints it and
exits 2).

What it does not do: it builds nothing (the bootstrap model is built later if missing)
and writes nothing; deeper checks (tokenizer, sandbox, ports, disk) are `scca doctor`'s.
"""

from __future__ import annotations

from pathlib import Path

from protocol.config import ConfigError, RunConfig
from protocol.dataset import DatasetError, read_jsonl


class InputError(ConfigError):
    """A run folder, data file or model folder that cannot be used; names file (and line)."""


def check_run_dir(run_dir: Path, resume: bool) -> None:
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.json").is_file():
            raise InputError(f"{run_dir}: not a run folder (no config.json): nothing to resume")
        if not (run_dir / "checkpoint" / "state.json").is_file():
            raise InputError(f"{run_dir / 'checkpoint'}: no checkpoint: the run stopped before its first one; "
                             f"start it again without --resume (into a new --out)")
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise InputError(f"--out {run_dir} is not empty (an earlier run?): choose a new folder, "
                         f"or continue that run with `scca run --resume {run_dir}`")


def read_prompt_file(cfg: RunConfig, split: str, path: str) -> list[dict]:
    """The rows the learner will read from `path`: the task's reader for JSONL tasks
    (math, code), the generic prompt format otherwise. Raises InputError naming the file."""
    from verifiers.tasks import JSONL, TASKS  # deploy may import every package
    from verifiers.tasks.jsonl import JsonlError

    key = f"[task] {split}_file"
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: no such file ({key})")
    try:
        rows = TASKS[cfg.task.name].load(str(p)) if cfg.task.name in JSONL else read_jsonl(p)
    except (DatasetError, JsonlError) as exc:
        raise InputError(f"{exc} ({key})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text at byte {exc.start} ({key})") from None
    if not rows:
        raise InputError(f"{path}: no rows ({key})")
    return rows


def check_inputs(cfg: RunConfig) -> dict[str, int]:
    """Every file the run will read, read now; returns rows per split that comes from a file."""
    from verifiers.tasks import JSONL

    if cfg.model.folder and not (Path(cfg.model.folder) / "config.json").is_file():
        raise InputError(f"{cfg.model.folder}: not a model folder (no config.json) ([model] folder)")
    counts = {}
    for split in ("train", "heldout"):
        path = getattr(cfg.task, f"{split}_file")
        if path:
            counts[split] = len(read_prompt_file(cfg, split, path))
        elif cfg.task.name in JSONL:
            raise InputError(f"task {cfg.task.name!r} reads its prompts from a file: set [task] {split}_file")
    return counts
