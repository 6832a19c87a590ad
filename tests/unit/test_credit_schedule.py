"""learner/credit/schedule.py: warm-up and ramp values, the reliability gate, score means."""

from __future__ import annotations

import math

import pytest
import torch

from learner.credit.schedule import LambdaSchedule, score_means

torch.set_num_threads(1)


def test_ramp_values_with_gate_disabled():
    sch = LambdaSchedule(lam_max=0.5, warmup_steps=10, ramp_steps=20, gate_ratio=0.0)
    got = [sch.update(step, None, None) for step in (0, 9, 10, 15, 20, 30, 100)]
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.125, 0.25, 0.5, 0.5])
    assert LambdaSchedule(lam_max=0.3, warmup_steps=5, ramp_steps=0, gate_ratio=0.0).update(5, None, None) == 0.3


def test_gate_holds_lambda_at_zero_until_the_ema_crosses():
    sch = LambdaSchedule(lam_max=0.5, warmup_steps=0, ramp_steps=0, gate_ratio=1.2, ema=0.5)
    assert sch.update(0, None, None) == 0.0 and not sch.gate_open and sch.ratio_ema is None
    # the self-teacher does not tell wrong from right: ratio 1.0 -> λ stays 0 for ever
    for step in range(1, 50):
        assert sch.update(step, 0.3, 0.3) == 0.0
    assert sch.ratio_ema == pytest.approx(1.0) and sch.metrics()["credit/gate_open"] == 0.0
    # ratio 2.0: EMA 1.0 -> 1.5 (opens); then a step with no correct samples leaves it unchanged
    assert sch.update(50, 0.6, 0.3) == 0.5 and sch.ratio_ema == pytest.approx(1.5)
    assert sch.update(51, 0.6, None) == 0.5 and sch.ratio_ema == pytest.approx(1.5)
    assert sch.update(52, float("nan"), 0.3) == 0.5
    # the gate is not sticky: ratio 0.5 -> EMA 1.0 < 1.2 -> λ back to 0
    assert sch.update(53, 0.15, 0.3) == 0.0 and sch.ratio_ema == pytest.approx(1.0)
    m = sch.metrics()
    assert m["credit/lambda"] == 0.0 and m["credit/ratio_ema"] == pytest.approx(1.0)


def test_gate_and_warmup_together_and_state_roundtrip():
    sch = LambdaSchedule(lam_max=0.4, warmup_steps=3, ramp_steps=4, gate_ratio=1.2, ema=0.9)
    lams = [sch.update(step, 2.0, 1.0) for step in range(9)]  # gate open from the first step
    assert lams == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    other = LambdaSchedule(lam_max=0.4, warmup_steps=3, ramp_steps=4)
    other.load_state_dict(sch.state_dict())
    assert other.gate_open and other.ratio_ema == pytest.approx(2.0)
    with pytest.raises(ValueError):
        LambdaSchedule(lam_max=1.5)


def test_score_means():
    s = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0], [4.0, 4.0, 0.0], [7.0, 7.0, 7.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([-1.0, -1.0, 1.0, -1.0, 1.0])
    inc, cor = score_means(s, mask, adv)
    assert inc == pytest.approx((2.0 + 2.0) / 2) and cor == pytest.approx((4.0 + 5.0) / 2)
    inc, cor = score_means(s, mask, adv, torch.tensor([True, False, True, True, False]))
    assert inc == pytest.approx(2.0) and cor == pytest.approx(4.0)
    inc, cor = score_means(s, mask, torch.tensor([-1.0, -1.0, -1.0, 0.0, 0.0]))
    assert cor is None and not math.isnan(inc)
