"""learner/loss.py pinned to hand-computed numbers (arithmetic written out per case)."""

from __future__ import annotations

import math

import pytest
import torch

from learner.loss import (
    ADV_EPS,
    DUAL_CLIP,
    EPS_HIGH,
    EPS_LOW,
    IS_CAP,
    MAX_LOG_RATIO,
    group_advantages,
    lag_ok,
    policy_loss,
)

torch.set_num_threads(1)


def _inputs(ratios, b_raw, adv, mask, base=-1.3):
    """[1, T] tensors with r = exp(logp - prox) = ratios, exp(prox - behav) = b_raw."""
    prox = torch.full((1, len(ratios)), base, dtype=torch.float64)
    logp = (prox + torch.log(torch.tensor([ratios], dtype=torch.float64))).requires_grad_(True)
    behav = prox - torch.log(torch.tensor([b_raw], dtype=torch.float64))
    a = torch.tensor([adv], dtype=torch.float64)
    m = torch.tensor([mask], dtype=torch.float64)
    return logp, prox, behav, a, m


def test_constants_match_design():
    assert (MAX_LOG_RATIO, IS_CAP, EPS_LOW, EPS_HIGH, DUAL_CLIP, ADV_EPS) == (20.0, 2.0, 0.2, 0.28, 3.0, 1e-6)


def test_unclipped_regime():
    # t0: A = 1,    r = 1.1 in [0.8, 1.28]: pg = max(-1.1, -1.1) = -1.1
    # t1: A = -0.5, r = 0.9:                pg = max(0.45, 0.45) = 0.45
    # t2: A = 1,    r = 0.5 (< 0.8 but A > 0: the unclipped branch is the max):
    #     pg = max(-0.5, -1 * 0.8) = -0.5
    # b = 1 everywhere; L = (-1.1 + 0.45 - 0.5) / 3 = -1.15 / 3
    logp, prox, behav, a, m = _inputs([1.1, 0.9, 0.5], [1, 1, 1], [1.0, -0.5, 1.0], [1, 1, 1])
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(-1.15 / 3, abs=1e-12)
    loss.backward()
    # dL/dlogp_t = b * (-A) * r / N: (-1.1/3, 0.45/3, -0.5/3)
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1 / 3, 0.45 / 3, -0.5 / 3]], dtype=torch.float64))
    assert st["clip_frac_low"] == 0.0 and st["clip_frac_high"] == 0.0 and st["dual_clip_frac"] == 0.0
    assert st["ratio_mean"] == pytest.approx((1.1 + 0.9 + 0.5) / 3)
    assert st["ess"] == pytest.approx(1.0) and st["mismatch"] == pytest.approx(0.0) and st["tokens"] == 3.0


def test_clipped_high():
    # A = 2, r = 1.5 > 1.28: pg = max(-2 * 1.5, -2 * 1.28) = max(-3.0, -2.56) = -2.56, grad 0
    logp, prox, behav, a, m = _inputs([1.5], [1], [2.0], [1])
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(-2.56, abs=1e-12)
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0
    assert st["clip_frac_high"] == 1.0 and st["clip_frac_low"] == 0.0


def test_clipped_low():
    # A = -1, r = 0.5 < 0.8: pg = max(0.5, 0.8) = 0.8, grad 0
    logp, prox, behav, a, m = _inputs([0.5], [1], [-1.0], [1])
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(0.8, abs=1e-12)
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0
    assert st["clip_frac_low"] == 1.0 and st["clip_frac_high"] == 0.0 and st["dual_clip_frac"] == 0.0


def test_dual_clip():
    # t0: A = -1, r = 5: pg = max(5, 1.28) = 5 -> min(5, 3 * |-1|) = 3, grad 0
    # t1: A = -1, r = 2: pg = max(2, 1.28) = 2 < 3, not dual-clipped, grad = -A r / N = 2/2 = 1
    logp, prox, behav, a, m = _inputs([5.0, 2.0], [1, 1], [-1.0, -1.0], [1, 1])
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx((3.0 + 2.0) / 2, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert st["dual_clip_frac"] == 0.5 and st["clip_frac_low"] == 0.0
    # a different c: c = 4 bounds t0 at 4 instead of 3
    loss4, _ = policy_loss(logp, prox, behav, a, m, dual_clip=4.0)
    assert loss4.item() == pytest.approx((4.0 + 2.0) / 2, abs=1e-12)


def test_truncated_importance_weight():
    # t0: exp(prox - behav) = 5 -> b = min(5, 2) = 2;  A = 1, r = 1: b pg = 2 * -1 = -2
    # t1: exp(prox - behav) = 1.5 -> b = 1.5;          A = 1, r = 1: b pg = -1.5
    # L = (-2 - 1.5) / 2 = -1.75; grad = b (-A) r / N = (-1, -0.75)
    logp, prox, behav, a, m = _inputs([1.0, 1.0], [5.0, 1.5], [1.0, 1.0], [1, 1])
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(-1.75, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -0.75]], dtype=torch.float64))
    assert st["is_trunc_frac"] == 0.5
    assert st["mismatch"] == pytest.approx((math.log(5) + math.log(1.5)) / 2)
    # ESS: b = (2, 1.5): (3.5)^2 / (2 * (4 + 2.25)) = 12.25 / 12.5 = 0.98
    assert st["ess"] == pytest.approx(0.98)
    # b is a constant: behav/prox carry no gradient even if they require grad
    prox2 = prox.clone().requires_grad_(True)
    loss2, _ = policy_loss(logp, prox2, behav, a, m)
    loss2.backward()
    assert prox2.grad is None or prox2.grad.abs().max().item() == 0.0


def test_all_regimes_in_one_batch_with_padding():
    # tokens (A, r, exp(prox - behav)):
    #   t0 unclipped (1, 1.1, 1):    b pg = -1.1
    #   t1 clip high (2, 1.5, 1):    b pg = -2.56
    #   t2 clip low  (-1, 0.5, 1):   b pg = 0.8
    #   t3 dual      (-1, 5, 1):     b pg = 3
    #   t4 trunc IS  (1, 1, 5):      b pg = 2 * -1 = -2
    #   t5 padding   (100, 7, 9)     ignored
    # L = (-1.1 - 2.56 + 0.8 + 3 - 2) / 5 = -1.86 / 5 = -0.372
    logp, prox, behav, a, m = _inputs(
        [1.1, 1.5, 0.5, 5.0, 1.0, 7.0], [1, 1, 1, 1, 5.0, 9.0], [1, 2, -1, -1, 1, 100.0], [1, 1, 1, 1, 1, 0]
    )
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(-0.372, abs=1e-12)
    loss.backward()
    # grads: t0 -1.1/5 = -0.22; t1, t2, t3 clipped: 0; t4 2 * -1 * 1 / 5 = -0.4; t5 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.22, 0, 0, 0, -0.4, 0]], dtype=torch.float64))
    assert st["tokens"] == 5.0
    assert st["clip_frac_high"] == pytest.approx(0.2) and st["clip_frac_low"] == pytest.approx(0.2)
    assert st["dual_clip_frac"] == pytest.approx(0.2) and st["is_trunc_frac"] == pytest.approx(0.2)
    assert st["ratio_mean"] == pytest.approx((1.1 + 1.5 + 0.5 + 5 + 1) / 5)  # 1.82
    assert st["mismatch"] == pytest.approx(math.log(5) / 5)
    # b = (1, 1, 1, 1, 2): (6)^2 / (5 * 8) = 0.9
    assert st["ess"] == pytest.approx(0.9)


def test_masking_across_rows_and_garbage_in_padding():
    # row 0: A = (1, -2) valid, then padding with logp = -inf, prox = NaN
    # row 1: A = 3 valid, then padding
    # all r = b = 1: L = -(1 - 2 + 3) / 3 = -2/3; grad = -A / 3 on valid, 0 on padding
    prox = torch.tensor([[-1.0, -2.0, float("nan")], [-0.5, -1.0, -1.0]], dtype=torch.float64)
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    behav = prox.clone()
    a = torch.tensor([[1.0, -2.0, 50.0], [3.0, 9.0, 9.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.float64)
    loss, st = policy_loss(logp, prox, behav, a, m)
    assert loss.item() == pytest.approx(-2 / 3, abs=1e-12)
    loss.backward()
    torch.testing.assert_close(
        logp.grad, torch.tensor([[-1 / 3, 2 / 3, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    )
    assert st["tokens"] == 3.0 and math.isfinite(st["ess"])


def test_empty_mask_gives_zero_loss_with_grad():
    logp = torch.randn(2, 3, requires_grad=True)
    z = torch.zeros(2, 3)
    loss, st = policy_loss(logp, logp.detach(), logp.detach(), torch.ones(2, 3), z)
    assert loss.item() == 0.0
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().max().item() == 0.0
    assert st["tokens"] == 0.0 and st["ess"] == 0.0


def test_ess_formula():
    # b = (1, 1.5, 0.5, 1): (sum b)^2 / (N sum b^2) = 16 / (4 * 4.5) = 0.8888...
    logp, prox, behav, a, m = _inputs([1, 1, 1, 1], [1.0, 1.5, 0.5, 1.0], [1, 1, 1, 1], [1, 1, 1, 1])
    _, st = policy_loss(logp, prox, behav, a, m)
    assert st["ess"] == pytest.approx(16 / 18)
    assert st["is_trunc_frac"] == 0.0
    assert st["mismatch"] == pytest.approx((0 + math.log(1.5) + math.log(2) + 0) / 4)


def test_log_ratio_clamp_keeps_loss_finite():
    # logp - prox = 100 is clamped to 20: r = e^20; A = -1 -> dual clip 3; A = +1 -> clip -1.28
    prox = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.full((1, 2), 100.0, dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    loss, st = policy_loss(logp, prox, prox, a, torch.ones(1, 2, dtype=torch.float64))
    assert loss.item() == pytest.approx((3.0 - 1.28) / 2)
    assert st["ratio_mean"] == pytest.approx(math.exp(20.0))
    loss.backward()
    assert torch.isfinite(logp.grad).all()


def test_on_policy_equals_grpo_and_reinforce_gradient():
    # max_lag = 0, first step: logp == prox == behav, so r = b = 1, no clipping.
    # L = -sum m A / sum m, and dL/dz = -sum_t m_t A_t (onehot(y_t) - softmax(z_t)) / sum m
    torch.manual_seed(0)
    B, T, V = 3, 4, 7
    z = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)  # leaf logits
    y = torch.randint(0, V, (B, T))
    seq_adv = torch.tensor([1.2, -0.4, -0.8], dtype=torch.float64)
    A = seq_adv[:, None].expand(B, T)
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)

    def logp_of(logits):
        return torch.log_softmax(logits, -1).gather(2, y[..., None]).squeeze(2)

    logp = logp_of(z)
    loss, _ = policy_loss(logp, logp.detach(), logp.detach(), A, m)
    expected = -(m * A).sum() / m.sum()  # (-(1.2*4) + 0.4*2 + 0.8*3) / 9 = -1.6 / 9
    assert loss.item() == pytest.approx(-1.6 / 9, abs=1e-12)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    loss.backward()
    onehot = torch.nn.functional.one_hot(y, V).double()
    reinforce = -(m * A)[..., None] * (onehot - torch.softmax(z.detach(), -1)) / m.sum()
    torch.testing.assert_close(z.grad, reinforce, rtol=1e-10, atol=1e-12)

    # numerical check (central differences, prox/behav frozen at z0) on a few coordinates
    z0 = z.detach()
    lp0 = logp_of(z0)

    def f(zz):
        return policy_loss(logp_of(zz), lp0, lp0, A, m)[0].item()

    h = 1e-6
    for idx in [(0, 0, 0), (1, 1, 3), (2, 2, y[2, 2].item()), (1, 3, 2)]:
        dz = torch.zeros_like(z0)
        dz[idx] = h
        num = (f(z0 + dz) - f(z0 - dz)) / (2 * h)
        assert num == pytest.approx(z.grad[idx].item(), abs=1e-8)


def test_shape_and_parameter_checks():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        policy_loss(x, x, x, x, torch.zeros(2, 4))
    with pytest.raises(ValueError):
        policy_loss(x, x, x, x, x, dual_clip=1.0)


def test_group_advantages_population_std():
    # R = (1, 0, 0, 0): mean 0.25; population std = sqrt((0.75^2 + 3 * 0.25^2) / 4)
    #   = sqrt(0.75 / 4) = sqrt(0.1875) = 0.4330127; A = (0.75, -0.25 x3) / 0.4330127
    #   = (1.7320508, -0.5773503 x3). (Unbiased std 0.5 would give (1.5, -0.5 x3).)
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(a, torch.tensor([1.7320508, -0.5773503, -0.5773503, -0.5773503]), atol=1e-5, rtol=0)
    # G = 2, R = (1, 0): mean 0.5, std 0.5 -> (+1, -1) (eps shifts it by ~2e-6)
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0])), torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)
    # eps enters the denominator: R = (1, 0), eps = 0.5 -> 0.5 / (0.5 + 0.5) = 0.5
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0]), eps=0.5), torch.tensor([0.5, -0.5]))
    # sum of advantages is 0
    assert group_advantages(torch.tensor([0.2, 0.9, 0.4])).sum().abs().item() < 1e-6


def test_group_advantages_dr_grpo_and_degenerate():
    # Dr. GRPO: no std division: R - mean = (1, 0, 0, 0) - 0.25
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), std_normalize=False)
    torch.testing.assert_close(a, torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # R = (3, 1): Dr. GRPO (1, -1); GRPO: std 1 -> (1, -1) / (1 + 1e-6)
    torch.testing.assert_close(group_advantages(torch.tensor([3.0, 1.0]), std_normalize=False), torch.tensor([1.0, -1.0]))
    # all-equal rewards: exactly zero (no eps blow-up of rounding residue)
    for std_norm in (True, False):
        z = group_advantages(torch.full((5,), 0.3), std_normalize=std_norm)
        assert torch.equal(z, torch.zeros(5))
    assert torch.equal(group_advantages(torch.tensor([1.0])), torch.zeros(1))
    # integer rewards are accepted (-> float)
    assert group_advantages(torch.tensor([1, 0])).dtype == torch.float32
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(2, 2))


def test_lag_ok():
    assert lag_ok(5, 5, 0)
    assert not lag_ok(6, 5, 0)
    assert lag_ok(7, 5, 2)
    assert not lag_ok(8, 5, 2)
    assert not lag_ok(4, 5, 1)  # behaviour newer than learner
    with pytest.raises(ValueError):
        lag_ok(1, 1, -1)
