"""learner/credit/batch.py + registry: the shared contract, `uniform`, `token_advantages`, `check_weights`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learner.credit import REGISTRY, CreditBatch, check_weights, token_advantages
from learner.credit.variants import uniform

torch.set_num_threads(1)

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)


def _batch(**kw) -> CreditBatch:
    base = dict(
        token_ids=torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 0, 0, 0]]),
        mask=MASK,
        adv=torch.tensor([1.5, -0.5, 0.0]),
        group_index=torch.tensor([0, 0, 1]),
    )
    base.update(kw)
    return CreditBatch(**base)


def test_uniform_returns_mask():
    w = uniform(_batch(), lam=0.7)  # lam is ignored by uniform
    assert torch.equal(w, MASK) and w.dtype == torch.float32
    assert w.data_ptr() != MASK.data_ptr()  # a new tensor, not an alias of the mask
    check_weights(w, MASK)
    assert REGISTRY["uniform"].fn is uniform


def test_every_registered_variant_keeps_the_contract():
    torch.manual_seed(0)
    B, T, k = 3, 4, 5
    batch = _batch(
        entropy=torch.rand(B, T),
        hidden=torch.randn(B, T, k),
        teacher_kl=torch.rand(B, T),
        teacher_logq=-torch.rand(B, T),
        plain_logp=-torch.rand(B, T),
        first_wrong=torch.tensor([1, 0, -1]),
    )
    for name, v in REGISTRY.items():
        for lam in (0.0, 0.5, 1.0):
            w = v(batch, lam=lam)
            assert w.shape == (B, T), name
            check_weights(w, MASK, mean_one=v.spec.mean_one)
            if v.spec.mean_one:  # advantage mass per sequence is kept: sum_t A_i w_it = A_i * n_i
                torch.testing.assert_close((token_advantages(batch.adv, w)).sum(1), batch.adv * MASK.sum(1))


def test_check_weights_catches_bad_weights():
    good = MASK.clone()
    check_weights(good, MASK)
    # mean 1 but uneven is fine: row 0 (0.5, 1.0, 1.5) has mean 1
    uneven = good.clone()
    uneven[0, :3] = torch.tensor([0.5, 1.0, 1.5])
    check_weights(uneven, MASK)

    bad = good.clone()
    bad[1, :2] = torch.tensor([1.0, 2.0])  # mean 1.5 in sequence 1
    with pytest.raises(ValueError, match="sequence 1 have mean 1.5"):
        check_weights(bad, MASK)
    neg = good.clone()
    neg[0, :3] = torch.tensor([2.0, 2.0, -1.0])  # mean 1 but negative
    with pytest.raises(ValueError, match="sequence 0 are negative"):
        check_weights(neg, MASK)
    pad = good.clone()
    pad[1, 3] = 0.25  # weight on a padding position
    with pytest.raises(ValueError, match="sequence 1 are nonzero on padding"):
        check_weights(pad, MASK)
    nan = good.clone()
    nan[2, 0] = float("nan")
    with pytest.raises(ValueError, match="sequence 2 are not finite"):
        check_weights(nan, MASK)
    with pytest.raises(ValueError):
        check_weights(good[:, :3], MASK)
    # small float error is tolerated, a real deviation is not
    check_weights(good * (1 + 1e-6), MASK)
    with pytest.raises(ValueError):
        check_weights(good * 1.01, MASK)


def test_token_advantages_sign_and_values():
    w = torch.tensor([[0.5, 1.0, 1.5, 0.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    adv = torch.tensor([1.5, -0.5, 0.0])
    a = token_advantages(adv, w)
    # row 0: 1.5 * (0.5, 1, 1.5) = (0.75, 1.5, 2.25); row 1: -0.5 * 2 = -1
    torch.testing.assert_close(
        a, torch.tensor([[0.75, 1.5, 2.25, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    )
    assert (a[0, :3] > 0).all() and (a[1, :1] < 0).all()
    with pytest.raises(ValueError):
        token_advantages(adv[:2], w)


def test_credit_batch_is_frozen_and_checks_shapes():
    b = _batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.mask = torch.zeros(3, 4)  # type: ignore[misc]
    assert b.entropy is None and b.hidden is None and b.teacher_kl is None
    with pytest.raises(ValueError, match="adv"):
        _batch(adv=torch.zeros(2))
    with pytest.raises(ValueError, match="teacher_kl"):
        _batch(teacher_kl=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="hidden"):
        _batch(hidden=torch.zeros(3, 4))
