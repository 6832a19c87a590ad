"""SPEED screening: cheap first samples decide whether a prompt gets a whole group (DESIGN §5).

Method: "Selective Prompting with Efficient Estimation of Difficulty" (SPEED; Zhang,
Arora, Mei, Zanette 2025, "SPEED-RL: Faster Training of Reasoning Models via Online
Curriculum Learning"). A group whose rewards are all equal has zero GRPO advantage and is
dropped (DAPO dynamic sampling); generating it was wasted. SPEED samples each prompt in
two phases:
  1. screening: `k` samples (`[learner] screen_samples`), scored;
  2. if their rewards are all equal the prompt is dropped (ledger reason `screened`),
     having cost k samples instead of G; otherwise the other `G - k` samples are drawn
     (continuation) and both parts train as one group of G (always with signal).
A prompt with pass rate p costs k + (G - k)·(1 - p^k - (1 - p)^k) samples in expectation
and yields a group with probability 1 - p^k - (1 - p)^k, against G samples and
1 - p^G - (1 - p)^G without screening: the saving is largest on prompts that are hopeless
(p ≈ 0) or solved (p ≈ 1), the ones DAPO drops after paying for all G.

What it does: the bookkeeping of the two phases for the hub. An item (ledger row) is
dispatched under its own id for screening and under `id + CONTINUATION` for the rest,
so a late copy of one phase is never taken for the other; a continuation is sent `urgent`
(the actor generates it before the work it already holds: the group's policy lag counts
from its older screening samples, so every queued batch it waited behind would age it);
the screened part waits here
(in memory) until its continuation is scored, then `merge` joins them. The merged group's
`weights_version` is the continuation's and `screen_version` the screening samples' (each
sample keeps its own behaviour log-probs, so the loss's importance weights stay exact);
`fresh_enough` lets the screening samples be SCREEN_LAG_SLACK versions older than max_lag.

What it does not do: touch the ledger or sockets (the hub does), or keep parked parts
across a learner restart (an item in flight after a restart is simply screened again).
"""

from __future__ import annotations

import dataclasses

from learner.loss import lag_ok

CONTINUATION = "+"  # work id suffix of a continuation: "pid@7" screens, "pid@7+" continues
# Versions the screening samples of a merged group may be older than max_lag allows: they
# were drawn one verify round trip before the continuation (measured: with max_lag 1 and
# no slack, 28-35% of merged groups were dropped as stale). Their behaviour log-probs
# travel with them, so the loss's truncated importance weights correct for the extra lag.
SCREEN_LAG_SLACK = 1


class Screening:
    """Phase bookkeeping for one hub. `screen = 0` (or >= group size) turns screening off."""

    def __init__(self, group_size: int, screen: int):
        self.group_size = group_size
        self.screen = screen if 0 < screen < group_size else 0
        self.parked: dict = {}  # item id -> the scored screening part (a hub Group)
        self.dropped = 0  # prompts dropped after screening
        self.continued = 0  # prompts that went on to a full group

    @property
    def on(self) -> bool:
        return self.screen > 0

    def work(self, item_id: str) -> tuple[str, int]:
        """(work id, samples to draw) for dispatching `item_id` now."""
        if not self.on:
            return item_id, self.group_size
        if item_id in self.parked:
            return item_id + CONTINUATION, self.group_size - self.screen
        return item_id, self.screen

    @staticmethod
    def is_continuation(work_id: str) -> bool:
        """A continuation's group waits on it, and its age counts from the older screening
        samples: the hub marks it `urgent` so the actor generates it before queued work."""
        return work_id.endswith(CONTINUATION)

    @staticmethod
    def item_of(work_id: str) -> str:
        return work_id[:-len(CONTINUATION)] if work_id.endswith(CONTINUATION) else work_id

    def size(self, work_id: str) -> int:
        """Samples a rollout for `work_id` must carry (what `work` asked for)."""
        if not self.on:
            return self.group_size
        return self.group_size - self.screen if self.is_continuation(work_id) else self.screen

    def expected(self, work_id: str) -> bool:
        """False for a rollout of the phase the item is no longer in (a late duplicate)."""
        if not self.on:
            return True
        return work_id.endswith(CONTINUATION) == (self.item_of(work_id) in self.parked)

    def on_scored(self, group) -> tuple[str, object]:
        """("train", group) | ("drop", None) | ("continue", None) for a group just scored."""
        if not self.on:
            return "train", group
        first = self.parked.pop(group.item_id, None)
        if first is not None:
            return "train", merge(first, group)
        if len(set(group.rewards)) == 1:
            self.dropped += 1
            return "drop", None
        self.parked[group.item_id] = group
        self.continued += 1
        return "continue", None

    def forget(self, item_id: str) -> None:
        """The item left the pipeline some other way (dropped by the hub)."""
        self.parked.pop(item_id, None)


def merge(first, second):
    """One group of both phases' samples (screening first). Its `weights_version` is the
    continuation's (the newer), `screen_version` the screening samples' (the older)."""
    return dataclasses.replace(
        first, samples=list(first.samples) + list(second.samples), rewards=list(first.rewards) + list(second.rewards),
        details=list(first.details or [{}] * len(first.samples)) + list(second.details or [{}] * len(second.samples)),
        weights_version=max(first.weights_version, second.weights_version),
        screen_version=min(first.weights_version, second.weights_version))


def fresh_enough(version: int, group, max_lag: int) -> bool:
    """The staleness rule (loss.lag_ok) for a group: lag <= max_lag, and for a merged group's
    screening samples lag <= max_lag + SCREEN_LAG_SLACK."""
    if not lag_ok(version, group.weights_version, max_lag):
        return False
    return group.screen_version is None or lag_ok(version, group.screen_version, max_lag + SCREEN_LAG_SLACK)


def expected_cost(p: float, group_size: int, screen: int) -> tuple[float, float]:
    """(expected samples generated, probability of a trained group) for pass rate p.

    Without screening (screen = 0): (G, 1 - p^G - (1-p)^G).
    With screening k: (k + (G - k) s_k, s_k) where s_k = 1 - p^k - (1-p)^k.
    """
    if not 0 < screen < group_size:
        return float(group_size), 1.0 - p ** group_size - (1.0 - p) ** group_size
    s = 1.0 - p ** screen - (1.0 - p) ** screen
    return screen + (group_size - screen) * s, s
