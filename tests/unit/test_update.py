"""learner/update.py: length-bucketed micro-batches give the gradient of the whole-batch token mean."""

from __future__ import annotations

import random

import numpy as np
import torch

from learner.hub import Group
from learner.update import flatten_groups, length_buckets, padded_tokens, policy_update
from protocol.config import LossConfig
from tiny import tiny_model, tiny_tokenizer

torch.set_num_threads(1)


def _groups(seed: int = 0, n_groups: int = 4, g: int = 4) -> list[Group]:
    rng = random.Random(seed)
    groups = []
    for k in range(n_groups):
        samples = []
        for _ in range(g):
            n = rng.randint(1, 12)
            samples.append({"token_ids": np.array([rng.randint(4, 23) for _ in range(n)], dtype=np.int32),
                            "logprobs": np.array([-rng.random() * 3 for _ in range(n)], dtype=np.float32)})
        rewards = [float(rng.random() < 0.5) for _ in range(g - 1)] + [1.0]
        rewards[0] = 0.0
        groups.append(Group(f"i{k}", f"p{k}", "12+3" * rng.randint(1, 3) + "=", 0, samples, rewards))
    return groups


def test_length_buckets_cover_every_row_once_and_sort_by_length():
    lengths = [5, 40, 7, 39, 6, 41, 8, 38]
    buckets = length_buckets(lengths, 4)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert [len(b) for b in buckets] == [4, 4]
    assert set(buckets[0]) == {1, 3, 5, 7}  # the long rows together
    unsorted = [list(range(0, 4)), list(range(4, 8))]
    assert padded_tokens(lengths, buckets) == 4 * 41 + 4 * 8
    assert padded_tokens(lengths, buckets) < padded_tokens(lengths, unsorted) == 4 * 40 + 4 * 41


def test_bucketed_update_equals_one_batch_update():
    """Same loss value and same gradient (hence the same AdamW step) with micro-batches of 3 rows
    sorted by length as with all 16 rows in one forward pass."""
    tok = tiny_tokenizer()
    groups = _groups()
    flat = flatten_groups(groups, lambda p: tok(p)["input_ids"], std_normalize=True)
    T = max(len(c) for c in flat.completions)
    w = torch.stack([torch.cat([torch.ones(len(c)), torch.zeros(T - len(c))]) for c in flat.completions])  # [N,T]
    results = []
    for micro in (len(flat.completions), 3):
        model = tiny_model(0).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: keep the weights, read the gradient
        grads = {}
        orig_zero = opt.zero_grad
        opt.zero_grad = lambda set_to_none=True: (grads.update({n: p.grad.clone() for n, p in model.named_parameters()}),
                                                  orig_zero(set_to_none))
        stats = policy_update(model, opt, flat, w, loss_cfg=LossConfig(), micro_batch=micro, grad_clip=1e9,
                              pad_id=tok.pad_token_id)
        results.append((stats, grads))
    (s1, g1), (s2, g2) = results
    assert abs(s1["loss"] - s2["loss"]) < 1e-6
    assert s1["tokens"] == s2["tokens"] == sum(len(c) for c in flat.completions)
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-4, atol=1e-6)
    assert s2["padded_tokens"] < s1["padded_tokens"]  # sorted micro-batches run fewer positions


def test_flatten_groups_tokenises_each_prompt_once_per_group():
    tok = tiny_tokenizer()
    groups = _groups(n_groups=2, g=3)
    flat = flatten_groups(groups, lambda p: tok(p)["input_ids"], std_normalize=False)
    assert len(flat.prompt_ids) == 6 and flat.prompt_ids[0] is flat.prompt_ids[2]
    assert flat.adv.shape == (6,)
    for k in range(2):  # Dr. GRPO: A = R - mean R
        r = torch.tensor(groups[k].rewards)
        torch.testing.assert_close(flat.adv[3 * k:3 * k + 3], r - r.mean())
