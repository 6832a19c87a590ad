"""learner/credit/cuts.py and the registry: the round-3 arms (O, T, R, K, K-RLSD) on hand-made rows."""

from __future__ import annotations

import pytest
import torch

from learner.credit import REGISTRY, CreditBatch, check_weights
from learner.credit.cuts import K_CAP
from learner.credit.schedule import LambdaSchedule
from protocol.config import ConfigError, CreditConfig, parse_config
from protocol.credit_methods import CREDIT_METHODS

torch.set_num_threads(1)

# rows: 0 correct, 1 wrong (5 tokens), 2 wrong (3 tokens + 2 padding), 3 wrong without a teacher, 4 A = 0
MASK = torch.tensor([[1.0] * 5, [1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 5, [1.0] * 5])
ADV = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0])
KL = torch.tensor([
    [0.1, 0.1, 0.1, 0.1, 0.1],
    [0.1, 0.2, 4.0, 1.0, 1.0],  # divergence at 2 (the KL maximum)
    [0.5, 0.1, 0.2, 0.0, 0.0],  # divergence at 0
    [5.0, 5.0, 5.0, 5.0, 5.0],
    [1.0, 1.0, 1.0, 1.0, 1.0],
])


def _batch(**kw) -> CreditBatch:
    base = dict(token_ids=torch.zeros(5, 5, dtype=torch.long), mask=MASK, adv=ADV,
                group_index=torch.tensor([0, 0, 0, 1, 1]), teacher_kl=KL,
                teacher_logq=torch.zeros(5, 5), has_teacher=torch.tensor([True, True, True, False, True]),
                first_wrong=torch.tensor([-1, 3, 1, 0, -1]))
    base.update(kw)
    return CreditBatch(**base)


def test_verifier_cuts_wrong_samples_after_the_first_wrong_token():
    w = REGISTRY["verifier"](_batch(), lam=1.0)
    expected = torch.tensor([[1.0] * 5, [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1.0] * 5])
    assert torch.equal(w, expected)
    check_weights(w, MASK, mean_one=False)
    # λ mixes with uniform; an unknown or out-of-row position keeps the row uniform
    half = REGISTRY["verifier"](_batch(), lam=0.5)
    assert torch.equal(half[1], torch.tensor([1, 1, 1, 1, 0.5]))
    far = REGISTRY["verifier"](_batch(first_wrong=torch.tensor([-1, -1, 3, 0, -1])), lam=1.0)
    assert torch.equal(far[1], MASK[1]) and torch.equal(far[2], MASK[2])
    with pytest.raises(ValueError, match="needs CreditBatch.first_wrong"):
        REGISTRY["verifier"](_batch(first_wrong=None), lam=1.0)


def test_sc_cut_at_the_teacher_divergence_and_the_shuffled_control():
    w = REGISTRY["sc_cut"](_batch(), lam=1.0)
    assert torch.equal(w[1], torch.tensor([1, 1, 1, 0, 0.0]))  # KL argmax at 2
    assert torch.equal(w[2], torch.tensor([1, 0, 0, 0, 0.0]))  # at 0
    assert torch.equal(w[3], MASK[3]) and torch.equal(w[0], MASK[0]) and torch.equal(w[4], MASK[4])
    # a low teacher probability earlier than the KL maximum cuts there (first_divergence)
    logq = torch.zeros(5, 5)
    logq[1, 1] = -5.0
    assert torch.equal(REGISTRY["sc_cut"](_batch(teacher_logq=logq), lam=1.0)[1], torch.tensor([1, 1, 0, 0, 0.0]))
    # R: the cut points {2, 0} permuted between rows 1 and 2, each clamped to its row
    seen = set()
    for seed in range(20):
        r = REGISTRY["sc_cut_shuffled"](_batch(shuffle_seed=seed), lam=1.0)
        check_weights(r, MASK, mean_one=False)
        seen.add((int(r[1].sum()), int(r[2].sum())))
        assert torch.equal(r[0], MASK[0]) and torch.equal(r[3], MASK[3])
    assert seen == {(3, 1), (1, 3)}  # both assignments occur; total kept mass 4 either way


def test_sc_grpo_batch_normaliser_cap_and_schedule():
    # reweighted rows: 1 and 2 (wrong, with a teacher): s̄ = (6.3 + 0.8) / 8 tokens
    s_bar = (0.1 + 0.2 + 4.0 + 1.0 + 1.0 + 0.5 + 0.1 + 0.2) / 8
    w = REGISTRY["sc_grpo"](_batch(), lam=1.0)
    expected1 = (KL[1] / s_bar).clamp(max=K_CAP)
    torch.testing.assert_close(w[1], expected1)
    assert float(w[1, 2]) == K_CAP  # 4.0 / 0.8875 > 4
    torch.testing.assert_close(w[2, :3], KL[2, :3] / s_bar)
    assert torch.equal(w[0], MASK[0]) and torch.equal(w[3], MASK[3]) and torch.equal(w[4], MASK[4])
    # no per-sequence renormalisation: the row far from the reference weighs more
    assert float(w[1].mean()) > 1.0 > float(w[2, :3].mean())
    check_weights(w, MASK, mean_one=False)
    half = REGISTRY["sc_grpo"](_batch(), lam=0.5)
    torch.testing.assert_close(half[1], 0.5 + 0.5 * expected1)
    # K-RLSD is the same weight under the decaying schedule
    assert REGISTRY["sc_grpo_rlsd"].fn is REGISTRY["sc_grpo"].fn
    sch = LambdaSchedule.for_method(CREDIT_METHODS["sc_grpo_rlsd"], CreditConfig(method="sc_grpo_rlsd"))
    assert [sch.update(s, 0.1, 1.0) for s in (0, 25, 50, 80)] == pytest.approx([0.5, 0.25, 0.0, 0.0])
    one = LambdaSchedule.for_method(CREDIT_METHODS["sc_grpo"], CreditConfig(method="sc_grpo"))
    assert one.update(0, 0.1, 1.0) == 1.0 and one.gate_open  # ungated even when the ratio is low


def test_registry_drives_config_validation_and_every_spec_resolves():
    assert set(REGISTRY) == set(CREDIT_METHODS)
    for name, v in REGISTRY.items():
        assert v.spec is CREDIT_METHODS[name] and callable(v.fn)
        parse_config({"credit": {"method": name}})
    with pytest.raises(ConfigError, match="unknown credit method 'sc_oracle'.*verifier"):
        parse_config({"credit": {"method": "sc_oracle"}})
    with pytest.raises(ConfigError, match="template"):
        parse_config({"credit": {"template": "{c} {answer}"}})
    with pytest.raises(ConfigError, match="terms apply to task 'arith' only"):
        parse_config({"task": {"name": "countdown", "terms": 10}})
    cfg = parse_config({"task": {"terms": 10, "digits": 1}})
    assert cfg.task.generator_kwargs() == {"n_terms": 10, "digits": 1}
    uniform_schedule = LambdaSchedule.for_method(CREDIT_METHODS["uniform"], CreditConfig())
    assert uniform_schedule.update(100, 2.0, 1.0) == 0.0
