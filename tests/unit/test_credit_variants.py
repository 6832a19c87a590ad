"""learner/credit/variants.py: the mean-one SCCA variants (DESIGN §6) — contract, hand-computed values, edge rows."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from learner.credit import REGISTRY, CreditBatch, check_weights, token_advantages
from learner.credit.normalise import U_MAX, score_weights, water_fill
from learner.credit.variants import first_divergence

torch.set_num_threads(1)

VARIANTS = ["sc_kl", "sc_prefix", "sc_unshared", "sc_pos", "sc_contrast", "sc_signed", "entropy", "hidden", "shuffled"]


def _row_batch(values: list[float], adv: float = 1.0, **kw) -> CreditBatch:
    """One row of len(values) valid tokens plus one padding column; `values` -> teacher_kl."""
    T = len(values) + 1
    mask = torch.tensor([[1.0] * len(values) + [0.0]])
    base = dict(token_ids=torch.zeros(1, T, dtype=torch.long), mask=mask, adv=torch.tensor([adv]),
                group_index=torch.zeros(1, dtype=torch.long),
                teacher_kl=torch.tensor([values + [0.0]]))
    base.update(kw)
    return CreditBatch(**base)


def _random_batch(seed: int, B: int = 12, T: int = 9, k: int = 4) -> CreditBatch:
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(0, T + 1, (B,), generator=g)  # some rows empty, some full
    mask = (torch.arange(T)[None, :] < n[:, None]).float()
    adv = torch.randn(B, generator=g)
    adv[::5] = 0.0
    return CreditBatch(
        token_ids=torch.randint(0, 40, (B, T), generator=g), mask=mask, adv=adv,
        group_index=torch.arange(B) // 4,
        entropy=torch.rand(B, T, generator=g) * 3, hidden=torch.randn(B, T, k, generator=g).half(),
        teacher_kl=torch.rand(B, T, generator=g) ** 3 * 5, teacher_logq=-torch.rand(B, T, generator=g) * 4,
        plain_logp=-torch.rand(B, T, generator=g) * 4, teacher_kl_wrong=torch.rand(B, T, generator=g),
        has_teacher=torch.rand(B, generator=g) > 0.3, has_wrong_teacher=torch.rand(B, generator=g) > 0.3,
        shuffle_seed=seed,
    )


@pytest.mark.parametrize("name", VARIANTS)
def test_contract_mean_one_sign_kept_and_inactive_rows_uniform(name):
    fn = REGISTRY[name]
    for seed in range(5):
        b = _random_batch(seed)
        for lam in (0.0, 0.3, 1.0):
            w = fn(b, lam=lam)
            assert w.shape == b.mask.shape and w.dtype == torch.float32
            check_weights(w, b.mask)  # w >= 0, padding 0, mean 1 per non-empty row
            a = token_advantages(b.adv, w)
            assert (torch.sign(a) * torch.sign(b.adv)[:, None] >= 0).all()  # sign never flipped
            torch.testing.assert_close(a.sum(1), b.adv * b.mask.sum(1))  # advantage mass kept
            # rows with A = 0 are always uniform; λ = 0 is uniform everywhere
            assert torch.equal(w[b.adv == 0], b.mask[b.adv == 0])
            if lam == 0.0:
                torch.testing.assert_close(w, b.mask)
            if name != "entropy" and name != "hidden":  # teacher-based: no teacher -> uniform
                assert torch.equal(w[~b.has_teacher], b.mask[~b.has_teacher])
        # the variant actually reweights something at λ = 1
        assert not torch.allclose(fn(b, lam=1.0), b.mask)


def test_sc_kl_hand_values_and_lambda_mix():
    b = _row_batch([1.0, 2.0, 3.0])  # mean 2 -> u = (0.5, 1, 1.5)
    w = REGISTRY["sc_kl"](b, lam=0.5)
    torch.testing.assert_close(w, torch.tensor([[0.75, 1.0, 1.25, 0.0]]))
    torch.testing.assert_close(REGISTRY["sc_kl"](b, lam=1.0), torch.tensor([[0.5, 1.0, 1.5, 0.0]]))
    with pytest.raises(ValueError, match="lam"):
        REGISTRY["sc_kl"](b, lam=1.5)


def test_water_filling_cap_holds_after_normalisation():
    s = [10.0] + [1.0] * 7  # mean 17/8: u0 = 80/17 > U_MAX is capped, the rest shares the remaining mass
    w = REGISTRY["sc_kl"](_row_batch(s), lam=1.0)
    torch.testing.assert_close(w[0, :8], torch.tensor([U_MAX] + [4.0 / 7] * 7))
    # one-hot score: no α reaches mean 1 under the cap; the spike sits at the cap, the rest spread evenly
    w1 = REGISTRY["sc_kl"](_row_batch([1.0] + [0.0] * 9), lam=1.0)
    torch.testing.assert_close(w1[0, :10], torch.tensor([U_MAX] + [6.0 / 9] * 9))
    # a spike and a slope: the spike is capped, below the cap u stays proportional to s (one α per row):
    # s / mean = 30 / 7.25 > 4 -> u0 = 4; the other 4 units of mass go to s[1:] in proportion, α = 4 / 28
    s2 = [30.0, 20.0, 3.0, 2.0, 1.0, 1.0, 1.0, 0.0]
    w2 = REGISTRY["sc_kl"](_row_batch(s2), lam=1.0)[0, :8]
    torch.testing.assert_close(w2, torch.tensor([U_MAX] + [x * 4.0 / 28.0 for x in s2[1:]]))


def test_water_fill_bounds_on_random_rows():
    g = torch.Generator().manual_seed(1)
    s = torch.rand(200, 30, generator=g) ** 8 * 100  # heavy-tailed scores
    valid = torch.rand(200, 30, generator=g) > 0.2
    u = water_fill(s, valid)
    n = valid.sum(1)
    assert (u <= U_MAX + 1e-9).all() and (u[~valid] == 0).all()
    torch.testing.assert_close(u.sum(1)[n > 0], n[n > 0].double())
    with pytest.raises(ValueError, match="cap"):
        water_fill(s, valid, cap=0.5)


def test_tiny_mean_score_adv_zero_and_no_teacher_give_uniform():
    ones = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.equal(REGISTRY["sc_kl"](_row_batch([5e-5, 1e-4, 5e-5]), lam=1.0), ones)  # mean < 1e-4
    assert not torch.equal(REGISTRY["sc_kl"](_row_batch([2e-4, 1e-4, 5e-5]), lam=1.0), ones)
    assert torch.equal(REGISTRY["sc_kl"](_row_batch([1.0, 2.0, 3.0], adv=0.0), lam=1.0), ones)
    b = _row_batch([1.0, 2.0, 3.0], has_teacher=torch.tensor([False]))
    for name in ("sc_kl", "sc_prefix", "sc_pos", "sc_signed", "sc_contrast", "shuffled"):
        kw = dict(teacher_logq=torch.zeros(1, 4), plain_logp=-torch.ones(1, 4))
        bb = _row_batch([1.0, 2.0, 3.0], has_teacher=torch.tensor([False]), **kw)
        assert torch.equal(REGISTRY[name](bb, lam=1.0), ones), name
    assert torch.equal(score_weights(b.teacher_kl, b.mask, 1.0, torch.tensor([False])), ones)


def test_missing_required_field_raises():
    b = CreditBatch(token_ids=torch.zeros(1, 3, dtype=torch.long), mask=torch.ones(1, 3),
                    adv=torch.tensor([1.0]), group_index=torch.zeros(1, dtype=torch.long))
    for name in VARIANTS:
        with pytest.raises(ValueError, match="needs CreditBatch"):
            REGISTRY[name](b, lam=0.5)
    with pytest.raises(ValueError, match="has_teacher"):
        _row_batch([1.0], has_teacher=torch.tensor([1]))  # must be bool


def test_first_divergence_and_sc_prefix_uniform_after_it():
    kl = torch.tensor([[0.1, 0.5, 3.0, 0.2, 3.0, 0.0], [0.1, 0.2, 0.3, 0.9, 0.1, 0.0]])
    mask = torch.tensor([[1.0] * 5 + [0.0], [1.0] * 5 + [0.0]])
    assert first_divergence(kl, mask).tolist() == [2, 3]  # first maximum
    logq = torch.zeros(2, 6)
    logq[1, 1] = math.log(0.05)  # q(y_1) < 0.1 in row 1: divergence moves to 1
    logq[0, 4] = math.log(0.01)  # after the max in row 0: no change
    d = first_divergence(kl, mask, logq)
    assert d.tolist() == [2, 1]
    b = CreditBatch(token_ids=torch.zeros(2, 6, dtype=torch.long), mask=mask, adv=torch.tensor([1.0, -1.0]),
                    group_index=torch.zeros(2, dtype=torch.long), teacher_kl=kl, teacher_logq=logq)
    w = REGISTRY["sc_prefix"](b, lam=1.0)
    check_weights(w, mask)
    assert torch.equal(w[0, 3:5], torch.ones(2)) and torch.equal(w[1, 2:5], torch.ones(3))
    # prefix of row 0: s = (0.1, 0.5, 3.0), mean 1.2 -> u = s / 1.2
    torch.testing.assert_close(w[0, :3], torch.tensor([0.1, 0.5, 3.0]) / 1.2)
    torch.testing.assert_close(w[1, :2], torch.tensor([0.1, 0.2]) / 0.15)


def test_sc_pos_only_touches_positive_samples():
    kl = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    b = CreditBatch(token_ids=torch.zeros(2, 2, dtype=torch.long), mask=torch.ones(2, 2),
                    adv=torch.tensor([0.7, -0.7]), group_index=torch.zeros(2, dtype=torch.long), teacher_kl=kl)
    w = REGISTRY["sc_pos"](b, lam=1.0)
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.5], [1.0, 1.0]]))


def test_sc_contrast_hand_values_and_missing_wrong_context():
    b = _row_batch([2.0, 1.0, 3.0], teacher_kl_wrong=torch.tensor([[1.0, 1.5, 1.0, 0.0]]))
    # s = max(0, (1, -0.5, 2)) = (1, 0, 2), mean 1 -> u = s
    torch.testing.assert_close(REGISTRY["sc_contrast"](b, lam=1.0), torch.tensor([[1.0, 0.0, 2.0, 0.0]]))
    bb = _row_batch([2.0, 1.0, 3.0], teacher_kl_wrong=torch.tensor([[1.0, 1.5, 1.0, 0.0]]),
                    has_wrong_teacher=torch.tensor([False]))
    ones = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.equal(REGISTRY["sc_contrast"](bb, lam=1.0), ones)
    assert torch.equal(REGISTRY["sc_contrast"](_row_batch([2.0, 1.0, 3.0]), lam=1.0), ones)


def test_sc_signed_follows_the_sign_of_the_advantage():
    lq = torch.tensor([[math.log(2.0), 0.0, math.log(0.5), math.log(1.1), 0.0]])  # log q - log p
    lp = torch.zeros(1, 5)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    for adv, r in ((1.0, [1.2, 1.0, 0.8, 1.1]), (-2.0, [0.8, 1.0, 1.2, 1 / 1.1])):
        b = CreditBatch(token_ids=torch.zeros(1, 5, dtype=torch.long), mask=mask, adv=torch.tensor([adv]),
                        group_index=torch.zeros(1, dtype=torch.long), teacher_kl=torch.zeros(1, 5),
                        teacher_logq=lq, plain_logp=lp)
        r = torch.tensor(r)
        torch.testing.assert_close(REGISTRY["sc_signed"](b, lam=1.0)[0, :4], r / r.mean())
        torch.testing.assert_close(REGISTRY["sc_signed"](b, lam=0.5)[0, :4], 0.5 + 0.5 * r / r.mean())


def test_entropy_hand_values():
    b = _row_batch([0.0, 0.0, 0.0], entropy=torch.tensor([[0.2, 0.2, 0.8, 0.0]]))  # mean 0.4
    torch.testing.assert_close(REGISTRY["entropy"](b, lam=1.0), torch.tensor([[0.5, 0.5, 2.0, 0.0]]))


def test_hidden_matches_an_independent_computation():
    h = torch.tensor([
        [[1.0, 0.0], [1.0, 0.2], [9.0, 9.0]],    # group 0, correct (3rd column is padding)
        [[-1.0, 0.0], [0.0, 1.0], [0.3, 0.1]],   # group 0, wrong
        [[2.0, 1.0], [0.5, 0.5], [1.0, 1.0]],    # group 1, only one sign -> uniform
    ])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    b = CreditBatch(token_ids=torch.zeros(3, 3, dtype=torch.long), mask=mask, adv=torch.tensor([1.0, -1.0, 1.0]),
                    group_index=torch.tensor([0, 0, 1]), hidden=h)
    w = REGISTRY["hidden"](b, lam=1.0)
    mu_p = torch.tensor([1.0, 0.1])
    mu_n = torch.tensor([-1.0, 0.0, 0.3]).mean(), torch.tensor([0.0, 1.0, 0.1]).mean()
    mu_n = torch.stack(mu_n)
    for i, n in ((0, 2), (1, 3)):
        s = F.cosine_similarity(h[i, :n] - (mu_p + mu_n) / 2, (mu_p - mu_n)[None, :], dim=-1).abs()
        u = water_fill((s / s.mean())[None, :], torch.ones(1, n, dtype=torch.bool))[0].float()
        torch.testing.assert_close(w[i, :n], u)
    assert torch.equal(w[2], mask[2])
    check_weights(w, mask)


def test_shuffled_is_a_seeded_permutation_of_sc_kl():
    b = _random_batch(3)
    w_kl = REGISTRY["sc_kl"](b, lam=0.7)
    w_sh = REGISTRY["shuffled"](b, lam=0.7)
    for i in range(w_kl.shape[0]):
        torch.testing.assert_close(w_sh[i].sort().values, w_kl[i].sort().values)
    assert torch.equal(w_sh * (b.mask == 0), torch.zeros_like(w_sh))
    assert not torch.allclose(w_sh, w_kl)  # it really moved weights
    assert torch.equal(REGISTRY["shuffled"](b, lam=0.7), w_sh)  # deterministic in the seed
    other = CreditBatch(**{**b.__dict__, "shuffle_seed": 99})
    assert not torch.equal(REGISTRY["shuffled"](other, lam=0.7), w_sh)


def test_sc_unshared_keeps_the_prefix_shared_with_an_opposite_sibling_uniform():
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 3, 3], [5, 6, 1, 1, 1], [5, 6, 7, 8, 9]])
    adv = torch.tensor([1.0, -1.0, -1.0, 0.0])  # row 3 (A = 0) is nobody's opposite
    kl = torch.tensor([[0.1, 0.2, 0.3, 4.0, 0.4]] * 4)
    b = CreditBatch(token_ids=ids, mask=torch.ones(4, 5), adv=adv, group_index=torch.zeros(4, dtype=torch.long),
                    teacher_kl=kl)
    from learner.credit.variants import shared_prefix_len
    assert shared_prefix_len(ids, b.mask, adv, b.group_index).tolist() == [3, 3, 2, 0]
    w = REGISTRY["sc_unshared"](b, lam=1.0)
    check_weights(w, b.mask)
    torch.testing.assert_close(w[0, :3], torch.ones(3))  # shared with row 1 (opposite sign)
    torch.testing.assert_close(w[0, 3:], torch.tensor([4.0, 0.4]) / 2.2)  # s / mean over the own suffix
    torch.testing.assert_close(w[2, :2], torch.ones(2))
    torch.testing.assert_close(w[3], torch.ones(5))  # A = 0
    # a different group is not a sibling: alone in its group, row 1 is plain sc_kl
    alone = CreditBatch(token_ids=ids[1:2], mask=torch.ones(1, 5), adv=adv[1:2],
                        group_index=torch.zeros(1, dtype=torch.long), teacher_kl=kl[1:2])
    torch.testing.assert_close(REGISTRY["sc_unshared"](alone, lam=0.7), REGISTRY["sc_kl"](alone, lam=0.7))
