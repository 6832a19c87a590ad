"""Why a learner run ended, and what it tells the world about it.

What it does: `StopReason` is the one record of how a run ended — `completed` (budget
spent), `interrupted` (SIGINT/SIGTERM: checkpointed at the current step, resumable),
`stalled` (a stall bound of `[monitor]` was passed) or `failed` (an error) — with the exit
code of the learner process (0, 128 + signal number, 3, 1), the one-line message printed
and written into `summary.json`, and whether the run is over for its peers.
`announce_run_over` sends `run_over` to every registered peer, so actors and verifiers
started on their own exit 0 instead of waiting for a learner that will not come back.

What it does not do: it stops nothing itself (the service does), and it sends no
`run_over` for an interrupted or failed learner: that one may be restarted with
`--resume` (a Kubernetes pod restart sends SIGTERM), so its peers keep reconnecting.
"""

from __future__ import annotations

import dataclasses
import signal

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_STALLED = 3
SIGNAL_EXIT_BASE = 128  # shell convention: a process ended by signal N exits 128 + N


@dataclasses.dataclass(frozen=True)
class StopReason:
    kind: str  # completed | interrupted | stalled | failed
    message: str  # one line, for the terminal and summary.json
    exit_code: int
    run_over: bool  # peers of this run should exit
    signum: int | None = None  # the signal that interrupted the run


def completed(steps: int) -> StopReason:
    return StopReason("completed", f"budget spent: {steps} steps", EXIT_COMPLETED, run_over=True)


def interrupted(signum: int, step: int | None = None) -> StopReason:
    name = signal.Signals(signum).name
    where = f" at step {step}" if step is not None else ""
    return StopReason("interrupted", f"{name}: checkpointed{where}; continue with --resume",
                      SIGNAL_EXIT_BASE + signum, run_over=False, signum=signum)


def stalled(message: str) -> StopReason:
    return StopReason("stalled", message, EXIT_STALLED, run_over=True)


def failed(exc: BaseException) -> StopReason:
    text = str(exc).strip().splitlines()
    return StopReason("failed", f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": "),
                      EXIT_FAILED, run_over=False)


async def announce_run_over(hub, reason: StopReason) -> int:
    """Tell every registered peer that the run is over; returns how many were told."""
    told = 0
    for peer in list(hub.peers.values()):
        told += await hub.ep.send(peer.identity, "run_over", run_id=hub.run_id, reason=reason.kind,
                                  message=reason.message[:1000])
    return told
