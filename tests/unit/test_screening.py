"""learner/screening.py: SPEED's two phases, the duplicate guard, the merge and the cost formula."""

from __future__ import annotations

import pytest

from learner.hub import Group
from learner.screening import CONTINUATION, Screening, expected_cost, fresh_enough, merge


def _group(item: str, rewards: list[float], version: int = 3) -> Group:
    samples = [{"token_ids": [i], "text": str(i)} for i in range(len(rewards))]
    return Group(item, "p", "1+1=", version, samples, list(rewards), [{"k": i} for i in range(len(rewards))])


def test_screen_then_continue_then_train_one_group_of_g():
    s = Screening(group_size=8, screen=3)
    assert s.work("p@0") == ("p@0", 3)
    assert s.on_scored(_group("p@0", [0, 1, 0], version=3)) == ("continue", None)
    assert s.work("p@0") == ("p@0" + CONTINUATION, 5)
    assert s.item_of("p@0" + CONTINUATION) == "p@0"
    assert s.expected("p@0" + CONTINUATION) and not s.expected("p@0")  # a late screening copy is a duplicate
    action, g = s.on_scored(_group("p@0", [1, 1, 0, 0, 0], version=4))
    assert action == "train" and len(g.samples) == 8 and g.rewards == [0, 1, 0, 1, 1, 0, 0, 0]
    assert g.weights_version == 4 and g.screen_version == 3 and [d["k"] for d in g.details] == [0, 1, 2, 0, 1, 2, 3, 4]
    assert not s.parked and s.continued == 1 and s.dropped == 0
    assert s.expected("p@0") and not s.expected("p@0" + CONTINUATION)


def test_screen_without_signal_is_dropped():
    s = Screening(group_size=8, screen=4)
    assert s.on_scored(_group("q@1", [0, 0, 0, 0])) == ("drop", None)
    assert s.on_scored(_group("q@2", [1, 1, 1, 1])) == ("drop", None)
    assert s.dropped == 2 and not s.parked


@pytest.mark.parametrize("screen", [0, 8, 9])
def test_off_passes_groups_through(screen):
    s = Screening(group_size=8, screen=screen)
    assert not s.on and s.work("a@1") == ("a@1", 8) and s.expected("a@1")
    g = _group("a@1", [0] * 8)
    assert s.on_scored(g) == ("train", g)


def test_merge_keeps_both_versions_and_staleness_allows_the_screen_one_more():
    a, b = _group("x", [1, 0], version=5), _group("x", [0], version=7)
    m = merge(a, b)
    assert (m.weights_version, m.screen_version, m.rewards) == (7, 5, [1, 0, 0])
    assert fresh_enough(7, m, max_lag=1)  # screening samples 2 versions old: max_lag 1 + slack 1
    assert not fresh_enough(8, m, max_lag=1)  # 3 versions old
    assert fresh_enough(6, _group("y", [1, 0], version=5), max_lag=1)
    assert not fresh_enough(7, _group("y", [1, 0], version=5), max_lag=1)  # no slack for a whole group
    assert not fresh_enough(4, _group("y", [1, 0], version=5), max_lag=1)  # newer than the learner


def test_expected_cost():
    assert expected_cost(0.0, 8, 0) == (8.0, 0.0)
    assert expected_cost(0.0, 8, 4) == (4.0, 0.0)  # a hopeless prompt costs half
    cost, signal = expected_cost(0.5, 8, 4)
    assert signal == pytest.approx(1 - 2 * 0.5 ** 4) and cost == pytest.approx(4 + 4 * signal)
    assert expected_cost(0.5, 8, 0)[1] == pytest.approx(1 - 2 * 0.5 ** 8)
