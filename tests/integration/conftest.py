"""Helpers for integration tests: real `scca` processes over real loopback sockets.

The tiny bootstrap model is built once (cached in .cache/scca/, as `make test` does)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOTSTRAP_DIR = Path(os.environ.get("SCCA_BOOTSTRAP_DIR", ROOT / ".cache" / "scca" / "bootstrap-s0"))


QWEN_DIR = Path(os.environ.get("SCCA_QWEN_DIR", ROOT / ".cache" / "scca" / "qwen2-gsm-s0"))


@pytest.fixture(scope="session")
def qwen_gsm() -> Path:
    """The Qwen2-style test model + GSM8K-style data (qwen_gsm.py), built once and cached."""
    from qwen_gsm import build

    return build(QWEN_DIR)


@pytest.fixture(scope="session")
def bootstrap_dir() -> Path:
    if not (BOOTSTRAP_DIR / "bootstrap.json").exists():
        subprocess.run([sys.executable, "-m", "deploy.cli", "bootstrap", "--out", str(BOOTSTRAP_DIR)], cwd=ROOT, check=True)
    return BOOTSTRAP_DIR


def scca(*args: str, log: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})


def sets(**sections: dict) -> list[str]:
    """sets(learner={"max_steps": 5}) -> ["--set", "learner.max_steps=5"]"""
    out = []
    for section, values in sections.items():
        for key, value in values.items():
            out += ["--set", f"{section}.{key}={json.dumps(value)}"]
    return out


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} while waiting for {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scrape(port: int) -> dict[str, float]:
    """Parse a Prometheus text page into {series-with-labels: value} (samples only)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def metrics_ports(run_dir: Path) -> dict[str, int]:
    """Metrics port of every process, from its log line `metrics on :PORT` (learner: learner.json)."""
    ports = {"learner": json.loads((run_dir / "learner.json").read_text())["metrics_port"]}
    for log in (run_dir / "logs").glob("*.log"):
        m = re.search(r"metrics on :(\d+)", log.read_text(errors="replace"))
        if m and log.stem != "learner":
            ports[log.stem] = int(m.group(1))
    return ports


def stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout)


def no_processes_with(marker: str) -> bool:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker.encode() in (p / "cmdline").read_bytes():
                    return False
            except OSError:
                continue
    return True


def pytest_terminal_summary(terminalreporter):
    """The numbers each fault test measured (test_faults.REPORT), in the summary even under -q."""
    reports = [m.REPORT for name, m in sys.modules.items() if name.endswith("test_faults") and getattr(m, "REPORT", None)]
    for report in reports:
        terminalreporter.section("fault injection: measured numbers")
        for fault, numbers in sorted(report.items()):
            terminalreporter.write_line(f"FAULT {fault}: {json.dumps(numbers, sort_keys=True)}")
