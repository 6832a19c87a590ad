"""Stall detection: is this run still learning, and if not, what is the likely cause?

What it does: `StallMonitor` keeps four measures, each with the warning and stop bounds
of `[monitor]` (protocol/config.py; a bound of 0 is off):
  * no_signal    consecutive scored training groups that cannot teach anything: rewards
                 all equal (zero advantage) or too stale to train (policy lag past
                 `max_lag`: actors stuck on old weights), with how many were all 0, all 1
                 and stale;
  * no_verified  seconds since a sample was last verified (training or held-out) while
                 the trainer had nothing waiting (a trainer busy in a long step is not
                 a stall);
  * no_actor / no_verifier  seconds since a live (registered, not quarantined) actor /
                 verifier was last seen;
  * publish_failed  consecutive weight publishes that failed (disk full, quota).
`check()` returns the warnings that are new (each condition warns once per episode, and
again after it cleared) and the first stop bound passed, as `Stall` records whose message
holds the numbers and the likely causes. `WatchedInbox` is the trainer's queue: every
scored group put on it is observed on the way (no change to the hub needed).

What it does not do: it stops nothing and logs nothing itself (learner/watch.py does), and
it reads no clock but the one it is given (tests drive it with their own).
"""

from __future__ import annotations

import dataclasses
import queue
import time
from collections.abc import Callable

CAUSES = {
    "no_signal_zero": "every sample scored 0: the task is too hard for this model, or model and task do not match "
                      "(wrong [task] name, prompts in another format, answers the verifier cannot parse); try a "
                      "warm-started model (`scca bootstrap --task NAME`), an easier task, or a larger [actor] group_size",
    "no_signal_one": "every sample scored 1: the task is too easy for this model, nothing is left to learn",
    "no_signal_mixed": "groups are all-right or all-wrong: raise [actor] group_size or [actor] temperature",
    "no_signal_stale": "actors generate with old weights: they cannot load new snapshots (a full disk, see the "
                       "publish errors; quarantined actors) or generate slower than [loss] max_lag allows",
    "no_verified": "verifiers are missing, stuck or slower than their jobs arrive (logs/verifier-*.log, [verifier] "
                   "completion_timeout_s), or actors generate nothing (logs/actor-*.log)",
    "no_actor": "actors crashed, were quarantined (weights_sync.jsonl) or cannot reach the learner's address "
                "(logs/actor-*.log); start one with `scca actor CONFIG --connect ADDRESS`",
    "no_verifier": "verifiers crashed or cannot reach the learner's address (logs/verifier-*.log); start one with "
                   "`scca verifier CONFIG --connect ADDRESS`",
    "publish_failed": "the disk holding the weights folder is full or over quota: free space, or lower [learner] "
                      "keep_snapshots",
}


@dataclasses.dataclass(frozen=True)
class Stall:
    condition: str  # no_signal | no_verified | no_actor | no_verifier | publish_failed
    value: float  # groups, seconds or failures
    bound: float  # the bound it passed
    message: str  # numbers + likely causes, one line


class StallMonitor:
    def __init__(self, cfg, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg  # MonitorConfig
        self.clock = clock
        now = clock()
        self.no_signal = 0  # consecutive groups with equal rewards
        self.no_signal_zero = 0  # ... of which every reward was 0
        self.no_signal_one = 0  # ... of which every reward was 1
        self.no_signal_stale = 0  # ... of which the policy lag was past max_lag
        self.groups = 0  # scored training groups seen
        self.last_verified = now
        self.last_actor = now
        self.last_verifier = now
        self.quarantined = 0
        self.publish_failures = 0
        self.publish_error = ""
        self.warned: set[str] = set()  # conditions past their warning bound now

    # --- observations ------------------------------------------------------------
    def observe_group(self, rewards: list[float], stale: bool = False) -> None:
        self.groups += 1
        self.last_verified = self.clock()
        if len(set(rewards)) > 1 and not stale:
            self.no_signal = self.no_signal_zero = self.no_signal_one = self.no_signal_stale = 0
            return
        self.no_signal += 1
        if stale:
            self.no_signal_stale += 1
        else:
            self.no_signal_zero += rewards[0] == 0.0
            self.no_signal_one += rewards[0] == 1.0

    def observe_verified(self, at: float | None = None) -> None:
        self.last_verified = max(self.last_verified, self.clock() if at is None else at)

    def observe_peers(self, actors: int, verifiers: int, quarantined: int = 0) -> None:
        now = self.clock()
        self.quarantined = quarantined
        if actors:
            self.last_actor = now
        if verifiers:
            self.last_verifier = now

    def observe_publish(self, consecutive_failures: int, error: str = "") -> None:
        self.publish_failures = consecutive_failures
        self.publish_error = error

    # --- verdict -------------------------------------------------------------------
    def measures(self) -> dict[str, float]:
        now = self.clock()
        return {"no_signal": self.no_signal, "no_verified": now - self.last_verified,
                "no_actor": now - self.last_actor, "no_verifier": now - self.last_verifier,
                "publish_failed": self.publish_failures}

    def bounds(self, condition: str) -> tuple[float, float]:
        """(warn, stop) of a condition; 0 = off."""
        c = self.cfg
        return {"no_signal": (c.no_signal_warn_groups, c.no_signal_stop_groups),
                "no_verified": (c.no_verified_warn_s, c.no_verified_stop_s),
                "no_actor": (c.no_peer_warn_s, c.no_peer_stop_s),
                "no_verifier": (c.no_peer_warn_s, c.no_peer_stop_s),
                "publish_failed": (0, c.publish_failures_stop)}[condition]

    def check(self) -> tuple[list[Stall], Stall | None]:
        """(new warnings, the first stop bound passed or None)."""
        warnings, stop = [], None
        for condition, value in self.measures().items():
            warn, limit = self.bounds(condition)
            if limit and value >= limit and stop is None:
                stop = Stall(condition, value, limit, self.describe(condition, value))
            if warn and value >= warn:
                if condition not in self.warned:
                    self.warned.add(condition)
                    warnings.append(Stall(condition, value, warn, self.describe(condition, value)))
            else:
                self.warned.discard(condition)
        return warnings, stop

    def describe(self, condition: str, value: float) -> str:
        if condition == "no_signal":
            zero, one, stale = self.no_signal_zero, self.no_signal_one, self.no_signal_stale
            key = ("no_signal_zero" if zero == value else "no_signal_one" if one == value
                   else "no_signal_stale" if stale * 2 >= value else "no_signal_mixed")
            return (f"{int(value)} scored groups in a row gave no learning signal ({zero} all 0, {one} all 1, "
                    f"{stale} too stale; {self.groups} groups scored so far). Likely: {CAUSES[key]}")
        if condition == "publish_failed":
            return (f"{int(value)} weight publishes in a row failed ({self.publish_error}); the previous snapshot "
                    f"keeps serving. Likely: {CAUSES[condition]}")
        what = {"no_verified": "no sample was verified", "no_actor": "no live actor was connected",
                "no_verifier": "no live verifier was connected"}[condition]
        extra = f" ({self.quarantined} quarantined)" if condition == "no_actor" and self.quarantined else ""
        return f"{what} for {value:.0f}s{extra}. Likely: {CAUSES[condition]}"


class WatchedInbox(queue.Queue):
    """The trainer's inbox; every scored group put on it is shown to the monitor first,
    stale when its policy lag against `version()` (the learner's) is past `max_lag`."""

    def __init__(self, monitor: StallMonitor, version: Callable[[], int] = lambda: 0, max_lag: int = 1_000_000):
        super().__init__()
        self.monitor, self.version, self.max_lag = monitor, version, max_lag

    def put(self, group, block: bool = True, timeout: float | None = None) -> None:
        self.observe_dropped(group)
        super().put(group, block, timeout)

    def observe_dropped(self, group) -> None:
        """Show a scored group to the monitor (also one the hub dropped itself: a screen without signal)."""
        self.monitor.observe_group(group.rewards, stale=self.version() - group.weights_version > self.max_lag)
