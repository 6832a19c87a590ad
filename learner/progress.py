"""Progress of a run as one set of fields, shown the same way everywhere.

What it does: `progress_fields` gathers step, samples, throughput, reward, held-out
accuracy, policy lag, groups dropped without signal and stale, live peers, elapsed time
and ETA into a flat dict (what the learner writes to `progress.json`); `format_line`
renders it as the one plain line the learner logs after every step (and every
`[monitor] progress_every_s` while no step completes) and `scca run` prints without a
terminal; `TABLE_COLUMNS` / `table_row` give the same fields for the live table.

ETA = (max_steps - step) x (seconds of this session / steps of this session): the rate
of the process that is running now, not of one before a resume.

What it does not do: no I/O, no clock (callers pass the times), no terminal handling.
"""

from __future__ import annotations

import math


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_fields(state: dict, last_row: dict | None, max_steps: int, heldout: list[float],
                    dropped: dict[str, int], peers: tuple[int, int], session_s: float, session_steps: int,
                    status: str) -> dict:
    """Flat progress record. `state`: the trainer's run state; `last_row`: its last metrics
    row (None before the first step); `heldout`: the held-out accuracies so far, oldest
    first; `dropped`: ledger drop counts by reason; `peers`: (live actors, live verifiers);
    `session_s` / `session_steps`: time and steps since this learner process started."""
    row = last_row or {}
    lags = row.get("lags") or []
    step = int(state.get("step", 0))
    eta = (max_steps - step) * session_s / session_steps if session_steps > 0 and step < max_steps else None
    return {
        "step": step, "max_steps": max_steps, "samples": int(state.get("samples_trained", 0)),
        "samples_per_s": row.get("samples_per_s"), "reward": row.get("reward_mean"),
        "heldout": [float(h) for h in heldout[-3:]],
        "lag": sum(lags) / len(lags) if lags else None,
        # no signal: whole groups with equal rewards, and SPEED screens whose first samples agreed
        "dropped_no_signal": int(dropped.get("no_signal", 0)) + int(dropped.get("screened", 0)),
        "dropped_stale": int(dropped.get("stale", 0)),
        "actors": peers[0], "verifiers": peers[1],
        "elapsed_s": float(state.get("wall_before", 0.0)) + session_s, "eta_s": eta, "status": status,
    }


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


TABLE_COLUMNS = ("step", "samples", "samples/s", "reward", "held-out acc", "lag", "no-signal drops",
                 "stale drops", "peers", "elapsed", "ETA", "status")


def table_row(f: dict) -> list[str]:
    return [f"{f['step']}/{f['max_steps']}", str(f["samples"]), _num(f["samples_per_s"], ".1f"),
            _num(f["reward"], ".3f"), " -> ".join(f"{a:.3f}" for a in f["heldout"]) or "-", _num(f["lag"], ".2f"),
            str(f["dropped_no_signal"]), str(f["dropped_stale"]), f"{f['actors']}a/{f['verifiers']}v",
            _clock(f["elapsed_s"]), _clock(f["eta_s"]), f["status"]]


def format_line(f: dict) -> str:
    """`step 12/150 | samples 1536 (41.2/s) | reward 0.281 | held-out 0.120 -> 0.140 | ...`"""
    cells = dict(zip(TABLE_COLUMNS, table_row(f)))
    return (f"step {cells['step']} | samples {cells['samples']} ({cells['samples/s']}/s) | reward {cells['reward']} "
            f"| held-out {cells['held-out acc']} | lag {cells['lag']} | dropped no-signal {cells['no-signal drops']}, "
            f"stale {cells['stale drops']} | peers {cells['peers']} | elapsed {cells['elapsed']} | ETA {cells['ETA']} "
            f"| {cells['status']}")
