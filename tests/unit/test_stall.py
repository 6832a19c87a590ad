"""Stall detection: warning and stop bounds of every condition, driven by a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

from learner.stall import StallMonitor, WatchedInbox
from protocol.config import MonitorConfig


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def monitor(**bounds) -> tuple[StallMonitor, Clock]:
    clock = Clock()
    return StallMonitor(MonitorConfig(**bounds), clock), clock


def test_equal_reward_groups_warn_once_then_stop_and_a_signal_resets():
    m, _ = monitor(no_signal_warn_groups=3, no_signal_stop_groups=5)
    for _ in range(2):
        m.observe_group([0.0] * 8)
    assert m.check() == ([], None)
    m.observe_group([0.0] * 8)
    warnings, stop = m.check()
    assert [w.condition for w in warnings] == ["no_signal"] and stop is None
    assert "3 scored groups in a row gave no learning signal (3 all 0" in warnings[0].message
    assert "too hard" in warnings[0].message
    assert m.check() == ([], None)  # warned once per episode
    m.observe_group([0.0, 1.0] + [0.0] * 6)  # a group with signal clears it
    assert m.no_signal == 0 and m.check() == ([], None) and not m.warned
    for _ in range(5):
        m.observe_group([1.0] * 8)
    warnings, stop = m.check()
    assert stop is not None and stop.condition == "no_signal" and stop.value == 5 and stop.bound == 5
    assert "5 all 1" in stop.message and "too easy" in stop.message


def test_time_bounds_for_verified_samples_and_peers():
    m, clock = monitor(no_verified_warn_s=10, no_verified_stop_s=30, no_peer_warn_s=5, no_peer_stop_s=20)
    m.observe_peers(actors=2, verifiers=1)
    clock.t += 6
    m.observe_peers(actors=2, verifiers=0)  # the verifier is gone
    warnings, stop = m.check()
    assert [w.condition for w in warnings] == ["no_verifier"] and stop is None
    assert "no live verifier was connected for 6s" in warnings[0].message
    clock.t += 5
    m.observe_verified()
    m.observe_peers(actors=2, verifiers=0)
    warnings, stop = m.check()
    assert warnings == [] and stop is None and m.warned == {"no_verifier"}
    clock.t += 10
    m.observe_peers(actors=0, verifiers=0, quarantined=1)
    warnings, stop = m.check()
    assert {w.condition for w in warnings} == {"no_verified", "no_actor"}
    assert stop is not None and stop.condition == "no_verifier" and stop.value == 21
    clock.t += 40
    _, stop = m.check()
    assert stop.condition == "no_verified"  # the first bound passed, in the order measured
    assert "(1 quarantined)" in m.describe("no_actor", 45)


def test_zero_bounds_are_off_and_publish_failures_stop():
    m, clock = monitor(no_signal_warn_groups=0, no_signal_stop_groups=0, no_verified_warn_s=0,
                       no_verified_stop_s=0, no_peer_warn_s=0, no_peer_stop_s=0, publish_failures_stop=2)
    for _ in range(10_000):
        m.observe_group([0.0, 0.0])
    clock.t += 1e6
    assert m.check() == ([], None)
    m.observe_publish(2, "No space left on device writing v7 under /run/weights")
    _, stop = m.check()
    assert stop.condition == "publish_failed" and "No space left" in stop.message and "keep_snapshots" in stop.message


def test_watched_inbox_shows_every_group_to_the_monitor():
    m, _ = monitor(no_signal_warn_groups=2, no_signal_stop_groups=3)
    version = [5]
    inbox = WatchedInbox(m, lambda: version[0], max_lag=1)
    inbox.put(SimpleNamespace(rewards=[0.0, 0.0], weights_version=5))
    inbox.put(SimpleNamespace(rewards=[0.0, 1.0], weights_version=4))
    inbox.put(SimpleNamespace(rewards=[0.0, 0.0], weights_version=5))
    assert inbox.qsize() == 3 and m.groups == 3 and m.no_signal == 1
    assert inbox.get().rewards == [0.0, 0.0]
    version[0] = 9  # actors stuck on old weights: signal, but too stale to train
    inbox.put(SimpleNamespace(rewards=[0.0, 1.0], weights_version=5))
    inbox.put(SimpleNamespace(rewards=[1.0, 0.0], weights_version=6))
    _, stop = m.check()
    assert stop.condition == "no_signal" and "2 too stale" in stop.message and "old weights" in stop.message


def test_stop_bound_must_lie_above_the_warning_bound():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no_signal_stop_groups"):
        MonitorConfig(no_signal_warn_groups=10, no_signal_stop_groups=10)
    MonitorConfig(no_signal_warn_groups=10, no_signal_stop_groups=0)  # 0 = never stop
