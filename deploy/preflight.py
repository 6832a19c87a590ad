"""What `scca run` checks before it starts any process (and `scca doctor` reuses), so bad
input fails in the terminal, in one line.

What it does:
  * `check_run_dir` refuses `--out` at a folder that already holds something unless
    `--resume` (a finished run would otherwise be appended to and stall), and for
    `--resume` names what is missing (the folder, its config, its checkpoint);
  * `check_inputs` reads every data file the config names the way the learner will (a
    generic prompt file, or the task's own JSONL reader) and a given model folder, so a bad
    row is reported as `FILE:LINE: problem`, not as a traceback in a learner log; a file
    of chat-message prompts needs `prompt_format = "chat"` and its system turn must be
    `[task] system_prompt` (`check_chat_data`);
  * `check_reward`: the plug-in reward (`[task] reward`) imports and is callable
    (verifiers/plugin.py);
  * `check_prompts`, on the prepared run (prompt rows in memory, each with the place it
    came from, e.g. the user's `gsm8k.jsonl:17`): the model folder's tokenizer renders every
    prompt in the run's format (protocol/prompts.py: a chat model without a template is an
    error naming the folder), no prompt is longer than the maximum unless
    `long_prompts = "drop"` (then the count is reported), and it has an eos id
    (protocol/tokens.py).
Every problem is a ConfigError (`InputError` for files and folders): the CLI prints it and
exits 2.

What it does not do: it builds nothing (the bootstrap model is built later if missing),
writes nothing and loads no weights; deeper checks (sandbox, ports, disk) are `scca
doctor`'s. The learner repeats the length check on its own prompt files (it may be started
alone with `scca learner`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from protocol.config import ConfigError, RunConfig
from protocol.dataset import DatasetError, data_files, prompt_file_rows, read_jsonl
from protocol.prompts import PromptFormatError, PromptRenderer, encode_rows, max_prompt_tokens
from protocol.tokens import TokenError, eos_ids


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
    try:
        files = data_files(p) if cfg.task.name in JSONL else [p]  # a task's data may be shards (a glob pattern)
        if not files[0].is_file():
            raise InputError(f"{path}: {'is a folder, not a file' if p.is_dir() else 'no such file'} ({key})")
        if cfg.task.name not in JSONL:
            rows = read_jsonl(p)
        elif (rows := prompt_file_rows(p)) is None:  # else already converted (a resumed run's data/, `scca data --from`)
            rows, report = TASKS[cfg.task.name].load(str(p), prompt_field=cfg.task.prompt_field,
                                                     answer_field=cfg.task.answer_field, with_report=True)
            check_chat_data(cfg, report.summary(), key)
    except (DatasetError, JsonlError) as exc:
        raise InputError(f"{exc} ({key})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text at byte {exc.start} ({key})") from None
    if not rows:
        raise InputError(f"{path}: no rows ({key})")
    return rows


def check_chat_data(cfg: RunConfig, report: dict, key: str) -> None:
    """A file whose prompts are chat messages (verifiers/tasks/fields.py) needs the chat
    format, and its system turn, when it has one, must be the run's `[task] system_prompt`
    (the run renders one; a file without a system turn gets the config's)."""
    if not report.get("chat_messages"):
        return
    path, system = report["path"], report["system_prompt"]
    if cfg.task.prompt_format != "chat":
        raise InputError(f"{path}: its prompts are chat messages, but [task] prompt_format = "
                         f"{cfg.task.prompt_format!r}: set prompt_format = 'chat' ({key})")
    if system and system != cfg.task.system_prompt:
        raise InputError(f"{path}: its prompts carry the system turn {system[:80]!r}, but [task] system_prompt = "
                         f"{cfg.task.system_prompt[:80]!r}; a run renders one system prompt: set [task] "
                         f"system_prompt to the file's ({key})")


def not_a_model_folder(folder: Path) -> str:
    """Why `folder` (without config.json) is not a model folder, and, for a Hugging Face hub
    cache entry (models--ORG--NAME/ with refs/ and snapshots/), the snapshot folder to name."""
    text = f"{folder}: not a model folder (no config.json) ([model] folder)"
    ref = folder / "refs" / "main"
    snapshots = sorted(p for p in (folder / "snapshots").glob("*") if (p / "config.json").is_file())
    if ref.is_file() and folder / "snapshots" / ref.read_text().strip() in snapshots:
        snapshots.append(folder / "snapshots" / ref.read_text().strip())  # the one refs/main names goes last
    return f"{text}; it is a Hugging Face cache entry: use {snapshots[-1]}" if snapshots else text


def check_inputs(cfg: RunConfig) -> dict[str, int]:
    """Every file the run will read, read now; returns rows per split that comes from a file."""
    from verifiers.tasks import JSONL

    if cfg.model.folder and not (Path(cfg.model.folder) / "config.json").is_file():
        raise InputError(not_a_model_folder(Path(cfg.model.folder)))
    counts = {}
    for split in ("train", "heldout"):
        path = getattr(cfg.task, f"{split}_file")
        if path:
            counts[split] = len(read_prompt_file(cfg, split, path))
        elif cfg.task.name in JSONL:
            raise InputError(f"task {cfg.task.name!r} reads its prompts from a file: set [task] {split}_file")
    return counts


def model_folder(cfg: RunConfig) -> Path:
    return Path(cfg.model.folder or cfg.model.bootstrap_dir)


def check_reward(cfg: RunConfig) -> None:
    if cfg.task.reward:
        from verifiers.plugin import load_reward  # deploy may import every package

        load_reward(cfg.task.reward)


def check_prompts(cfg: RunConfig, splits: dict[str, tuple[list[dict], Callable[[int], str]]]) -> dict[str, int]:
    """Render every split's rows; {split: prompts over the maximum (dropped by the learner)}.

    splits: {name: (rows, where)} with where(i) naming row i ("file:line").
    A folder without a tokenizer yet (a bootstrap still to be built) is not checked here.
    Raises ConfigError with one line naming the folder or the file and line.
    """
    folder = model_folder(cfg)
    if not (folder / "tokenizer_config.json").is_file():
        return {}
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    try:
        eos_ids(tokenizer, folder)
        renderer = PromptRenderer.for_task(tokenizer, cfg.task, folder)
        limit = max_prompt_tokens(cfg.task.max_prompt_tokens, folder, cfg.actor.max_new_tokens)
        return {name: encode_rows(rows, renderer, limit, cfg.task.long_prompts, where)[2]
                for name, (rows, where) in splits.items()}
    except (PromptFormatError, TokenError) as exc:
        raise ConfigError(str(exc)) from None
