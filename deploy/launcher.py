"""`scca run`: the whole pipeline on this machine, each service its own OS process (DESIGN §8).

What it does, top to bottom: prepare the run folder (prompt files, resolved config) ->
start the learner -> wait for its `learner.json` (bound address) -> start the actors and
verifiers, connected over TCP on loopback -> show progress from the learner's
`progress.json` (a live table on a terminal, plain lines otherwise; deploy/progress.py)
and report any service that dies with its last log lines -> pass Ctrl-C / SIGTERM on to
the learner, which checkpoints and exits -> when the learner exits, stop every child
(SIGTERM, then SIGKILL after a grace period) so no process outlives the run. Every child
also gets PR_SET_PDEATHSIG, so even a killed launcher leaves no orphans. A learner that
did not finish its budget raises `RunStopped` with its exit code and the one-line reason.

What it does not do: no restarts of crashed children (the learner re-dispatches their
work; restart them by hand or with an orchestrator), no remote hosts (run `scca actor
--connect` there).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from deploy.preflight import check_prompts, check_reward
from deploy.progress import ProgressView
from deploy.report import exit_report
from protocol.config import RunConfig
from protocol.dataset import prompt_file_rows, read_jsonl, write_jsonl

STOP_GRACE_S = 20.0  # seconds a child gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT_S = 300.0  # the learner must bind within this
SUPERVISE_S = 0.5  # how often the launcher looks at its children and the progress
PR_SET_PDEATHSIG = 1

console = Console(stderr=True)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def prompt_rows(cfg: RunConfig, split: str, given: str) -> tuple[list[dict], dict | None]:
    """Rows for the learner's generic prompt file (resolved_config decides when one is needed),
    and for a user's file what reading it found (verifiers/tasks/fields.py Report, with the
    place of each row, "file:line", under "places").

    Procedural tasks (arith, countdown) generate rows when no file is given; JSONL tasks
    (math, code) convert the user's file through the field mapping of `[task]`."""
    from verifiers.tasks import JSONL, PROCEDURAL, TASKS  # deploy may import every package

    task = TASKS[cfg.task.name]
    if cfg.task.name in JSONL:
        if not given:
            raise ValueError(f"task {cfg.task.name!r} reads its prompts from [task] {split}_file; none given")
        if (rows := prompt_file_rows(given)) is not None:  # already in the learner's format (`scca data --from`)
            return rows, None
        rows, report = task.load(given, prompt_field=cfg.task.prompt_field, answer_field=cfg.task.answer_field,
                                 with_report=True)
        return rows, {**report.summary(), "places": report.places}
    assert cfg.task.name in PROCEDURAL and not given
    n = cfg.task.train_size if split == "train" else cfg.task.heldout_size
    return task.generate(cfg.task.seed, n, split, **cfg.task.generator_kwargs()), None


def resolved_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The config a run in `run_dir` records: absolute paths, and the prompt files where
    prepare_run writes them (generated or converted rows go to run_dir/data/)."""
    from verifiers.tasks import JSONL

    task = cfg.task
    updates = {}
    for split, given in (("train", task.train_file), ("heldout", task.heldout_file)):
        written = task.name in JSONL or not given
        updates[f"{split}_file"] = str((run_dir / "data" / f"{split}.jsonl" if written else Path(given)).resolve())
    model = cfg.model.model_copy(update={"bootstrap_dir": str(Path(cfg.model.bootstrap_dir).resolve())})
    return cfg.model_copy(update={"task": task.model_copy(update=updates), "model": model})


def prepare_run(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """Write the run's prompt files after the preflight checks (deploy/preflight.py: plug-in
    reward, prompt format and lengths, naming the user's file and line); return the config
    with absolute paths. What reading users' files found goes to run_dir/data/report.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(cfg, run_dir)
    check_reward(cfg)
    splits, reports = {}, {}
    for split, given in (("train", cfg.task.train_file), ("heldout", cfg.task.heldout_file)):
        path = Path(getattr(resolved.task, f"{split}_file"))
        if path.parent == (run_dir / "data").resolve():  # generated or converted here, not used in place
            rows, report = prompt_rows(cfg, split, given)
            places = report.pop("places") if report else [f"{path}:{n}" for n in range(1, len(rows) + 1)]
            write_jsonl(rows, path)
            if report:
                reports[split] = report
        else:
            lines: list[int] = []
            rows = read_jsonl(path, lines)
            places = [f"{path}:{n}" for n in lines]
        splits[split] = (rows, places.__getitem__)
    for split, n in check_prompts(resolved, splits).items():
        reports.setdefault(split, {})["dropped_too_long"] = n
    if reports:
        (run_dir / "data").mkdir(exist_ok=True)
        (run_dir / "data" / "report.json").write_text(json.dumps(reports, indent=2))
        for split, r in reports.items():
            if r.get("duplicates_merged") or r.get("dropped_too_long"):
                console.print(f"{split}: {r.get('rows', '?')} prompts from {r.get('path', '?')}; "
                              f"{r.get('duplicates_merged', 0)} duplicate prompts merged "
                              f"({r.get('duplicates_conflicting', 0)} with another answer: first kept); "
                              f"{r.get('dropped_too_long', 0)} over the length limit dropped")
    (run_dir / "config.json").write_text(resolved.resolved_json())
    return resolved


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent, env=env)


def stop_all(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class RunStopped(RuntimeError):
    """The learner did not finish its budget: the message says why (with its last log lines
    unless it was interrupted), `exit_code` is the learner's, `summary` its summary.json."""

    def __init__(self, message: str, exit_code: int, summary: dict | None = None):
        super().__init__(message)
        self.exit_code, self.summary = exit_code, summary


def wait_ready(run_dir: Path, learner: subprocess.Popen, signals: list[int]) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = run_dir / "learner.json"
    log_path = run_dir / "logs" / "learner.log"
    while time.monotonic() < deadline:
        if signals:
            raise RunStopped(f"interrupted by {signal.Signals(signals[0]).name} while the learner was starting",
                             128 + signals[0])
        if learner.poll() is not None:
            raise RunStopped(exit_report("learner", learner.returncode, log_path), learner.returncode or 1)
        if ready.exists():
            return json.loads(ready.read_text())
        time.sleep(0.2)
    raise RunStopped(f"the learner did not bind within {READY_TIMEOUT_S:.0f}s\n"
                     + exit_report("learner", 0, log_path, "still starting"), 1)


def supervise(children: dict[str, subprocess.Popen], view: ProgressView, signals: list[int], logs: Path) -> None:
    """Until the learner exits: show progress, report services that die, and pass the
    first SIGINT/SIGTERM on to the learner (it checkpoints and exits 128 + N); a second
    one stops every process at once."""
    learner, forwarded = children["learner"], 0
    while learner.poll() is None:
        if len(signals) > forwarded:
            if forwarded == 0:
                learner.send_signal(signals[0])
                view.say(f"{signal.Signals(signals[0]).name}: the learner checkpoints and stops "
                         "(again to stop every process now)")
            else:
                stop_all(list(children.values()), grace_s=0.0)
            forwarded = len(signals)
        time.sleep(SUPERVISE_S)
        view.update()
        for name, p in children.items():
            if name != "learner" and p.poll() is not None:
                view.child_exited(name, p.returncode, logs / f"{name}.log")
    view.update()


def finish(run_dir: Path, learner: subprocess.Popen) -> dict:
    """The learner's summary, or RunStopped with its exit code and the reason."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else None
    rc = learner.returncode
    if rc == 0 and summary is not None:
        return summary
    if summary is not None and summary.get("stop_reason") == "interrupted":
        raise RunStopped(f"run interrupted ({summary['stop_message']}): scca run --resume {run_dir}", rc, summary)
    reason = summary.get("stop_message") if summary else None
    stopped = f"{summary['stop_reason']}: " if summary else ""
    raise RunStopped(exit_report("learner", rc, run_dir / "logs" / "learner.log",
                                 f"{stopped}{reason}" if reason else None), rc or 1, summary)


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    """Every service of a run on this machine; the learner's summary when it finished its
    budget, else RunStopped (interrupted, stalled, failed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg = prepare_run(cfg, run_dir)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    for old in ("learner.json", "progress.json", "summary.json"):  # files of an earlier session
        (run_dir / old).unlink(missing_ok=True)
    cfg_path = str(run_dir / "config.json")
    log_offset = (logs / "learner.log").stat().st_size if (logs / "learner.log").exists() else 0
    learner = spawn(["learner", cfg_path, "--run-dir", str(run_dir)] + (["--resume"] if resume else []), logs / "learner.log")
    children = {"learner": learner}
    signals: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: signals.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        address = wait_ready(run_dir, learner, signals)["address"]
        for i in range(cfg.actor.count):
            name = f"actor-{i}"
            rank = ["--set", f"actor.broadcast_rank={i + 1}"] if i + 1 < cfg.learner.broadcast_world_size else []
            children[name] = spawn(["actor", cfg_path, "--connect", address, "--name", name, *rank], logs / f"{name}.log")
        for i in range(cfg.verifier.count):
            name = f"verifier-{i}"
            children[name] = spawn(["verifier", cfg_path, "--connect", address, "--name", name], logs / f"{name}.log")
        with ProgressView(run_dir, cfg, console, log_offset) as view:
            supervise(children, view, signals, logs)
    finally:
        stop_all(list(children.values()))
        for s, handler in old.items():
            signal.signal(s, handler)
    return finish(run_dir, learner)
