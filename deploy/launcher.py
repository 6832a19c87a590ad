"""`scca run`: the whole pipeline on this machine, each service its own OS process (DESIGN §8).

What it does, top to bottom: prepare the run folder (prompt files, resolved config) ->
start the learner -> wait for its `learner.json` (bound address) -> start the actors and
verifiers, connected over TCP on loopback -> show live progress from `metrics.jsonl`
-> when the learner exits (budget spent) or on Ctrl-C / SIGTERM, stop every child
(SIGTERM, then SIGKILL after a grace period) so no process outlives the run. Every child
also gets PR_SET_PDEATHSIG, so even a killed launcher leaves no orphans.

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
from rich.live import Live
from rich.table import Table

from protocol.config import RunConfig
from protocol.dataset import write_jsonl

STOP_GRACE_S = 20.0  # seconds a child gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT_S = 300.0  # the learner must bind within this
PR_SET_PDEATHSIG = 1

console = Console(stderr=True)


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def prompt_rows(cfg: RunConfig, split: str, given: str) -> list[dict]:
    """Rows for the learner's generic prompt file (resolved_config decides when one is needed).

    Procedural tasks (arith, countdown) generate rows when no file is given; JSONL tasks
    (math, code) convert the user's `{"prompt","answer"}` / `{"prompt","tests"}` file."""
    from verifiers.tasks import JSONL, PROCEDURAL, TASKS  # deploy may import every package

    task = TASKS[cfg.task.name]
    if cfg.task.name in JSONL:
        if not given:
            raise ValueError(f"task {cfg.task.name!r} reads its prompts from [task] {split}_file; none given")
        return task.load(given)
    assert cfg.task.name in PROCEDURAL and not given
    n = cfg.task.train_size if split == "train" else cfg.task.heldout_size
    return task.generate(cfg.task.seed, n, split, **cfg.task.generator_kwargs())


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
    """Write the run's prompt files; return the config with absolute paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = resolved_config(cfg, run_dir)
    for split, given in (("train", cfg.task.train_file), ("heldout", cfg.task.heldout_file)):
        path = Path(getattr(resolved.task, f"{split}_file"))
        if path.parent == (run_dir / "data").resolve():  # generated or converted here, not used in place
            write_jsonl(prompt_rows(cfg, split, given), path)
    (run_dir / "config.json").write_text(resolved.resolved_json())
    return resolved


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent, env=env)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_ready(run_dir: Path, learner: subprocess.Popen) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready = run_dir / "learner.json"
    while time.monotonic() < deadline:
        if learner.poll() is not None:
            raise RuntimeError(f"learner exited with {learner.returncode} before binding; see {run_dir / 'logs' / 'learner.log'}")
        if ready.exists():
            return json.loads(ready.read_text())
        time.sleep(0.2)
    raise TimeoutError(f"learner did not bind within {READY_TIMEOUT_S}s")


def progress_table(run_dir: Path, cfg: RunConfig) -> Table:
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = next((r for r in reversed(rows) if "loss" in r), {})
    acc = [r["heldout_accuracy"] for r in rows if "heldout_accuracy" in r]
    lags = last.get("lags") or [0]
    table = Table(title=f"scca run {run_dir.name}")
    for col in ("step", "samples", "samples/s", "reward", "held-out acc", "lag (mean)", "dropped stale"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{last.get('step', 0)}/{cfg.learner.max_steps}", str(last.get("samples_trained", 0)),
        f"{last.get('samples_per_s', 0.0):.1f}", f"{last.get('reward_mean', 0.0):.3f}",
        " -> ".join(f"{a:.3f}" for a in acc[-3:]) or "-", f"{sum(lags) / len(lags):.2f}", str(last.get("dropped_stale", 0)),
    )
    return table


def run(cfg: RunConfig, run_dir: Path, resume: bool = False) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        cfg = prepare_run(cfg, run_dir)
    logs = run_dir / "logs"
    logs.mkdir(exist_ok=True)
    (run_dir / "learner.json").unlink(missing_ok=True)
    cfg_path = str(run_dir / "config.json")
    learner = spawn(["learner", cfg_path, "--run-dir", str(run_dir)] + (["--resume"] if resume else []), logs / "learner.log")
    procs = [learner]
    stop = {"asked": False}

    def on_signal(signum, frame):
        stop["asked"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        address = wait_ready(run_dir, learner)["address"]
        for i in range(cfg.actor.count):
            procs.append(spawn(["actor", cfg_path, "--connect", address, "--name", f"actor-{i}"], logs / f"actor-{i}.log"))
        for i in range(cfg.verifier.count):
            procs.append(spawn(["verifier", cfg_path, "--connect", address, "--name", f"verifier-{i}"], logs / f"verifier-{i}.log"))
        with Live(progress_table(run_dir, cfg), console=console, refresh_per_second=1, transient=False) as live:
            while learner.poll() is None:
                if stop["asked"]:
                    learner.send_signal(signal.SIGTERM)
                    stop["asked"] = False
                time.sleep(1.0)
                live.update(progress_table(run_dir, cfg))
    finally:
        stop_all(procs)
        for s, handler in old.items():
            signal.signal(s, handler)
    summary_path = run_dir / "summary.json"
    if learner.returncode != 0 or not summary_path.exists():
        raise RuntimeError(f"learner exited with {learner.returncode}; see {logs / 'learner.log'}")
    return json.loads(summary_path.read_text())
