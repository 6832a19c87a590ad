"""learner/credit/teacher.py: chunked / top-K KL against brute force; batching and left-padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learner.logprobs import build_batch, token_logprobs
from learner.credit.teacher import DEFAULT_TEMPLATE, teacher_scores, token_kl
from tiny import tiny_tokenizer

torch.set_num_threads(1)
V = 40


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False,
                      max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        m.lm_head.weight.mul_(20.0)  # peaked distributions, so the KLs are not all ~0
    return m.eval()


TOK = tiny_tokenizer()
PROMPTS = ["12+34=", "7+8+9=", "5-3=", "99+1=", "3*4="]
COMPLETIONS = [[5, 6, 17, 2], [8, 9, 10, 11, 12, 13, 2], [6, 2], [4, 4, 4, 4, 4], []]
CONTEXTS = ["12+34=46;#46", "7+8=15;15+9=24;#24", None, "99+1=100;#100", "3*4=12"]


def _brute(model, prompt: str, comp: list[int], ctx: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpadded single-row forwards and the full-vocabulary KL written out directly."""
    out = []
    for text in (prompt, DEFAULT_TEMPLATE.format(c=ctx, prompt=prompt)):
        ids = TOK(text)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids + comp])).logits[0]  # [L, V]
        out.append(torch.log_softmax(logits[len(ids) - 1:len(ids) - 1 + len(comp)].double(), dim=-1))
    lp, lq = out
    kl = (lp.exp() * (lp - lq)).sum(-1)
    tgt = torch.tensor(comp)[:, None]
    return kl, lp.gather(1, tgt).squeeze(1), lq.gather(1, tgt).squeeze(1)


@pytest.mark.parametrize("vocab_chunk", [7, 1000])  # chunked (40 = 5*7 + 5) and direct
def test_matches_brute_force_per_row(vocab_chunk):
    model = _model()
    res = teacher_scores(model, TOK, PROMPTS, COMPLETIONS, CONTEXTS, micro_batch=3, vocab_chunk=vocab_chunk)
    assert res["kl"].shape == (5, 7) and res["mask"].sum(1).tolist() == [4, 7, 2, 5, 0]
    assert res["has_teacher"].tolist() == [True, True, False, True, True]
    for i, (p, c, ctx) in enumerate(zip(PROMPTS, COMPLETIONS, CONTEXTS)):
        if ctx is None or not c:
            assert torch.equal(res["kl"][i], torch.zeros(7)) and torch.equal(res["logq"][i], torch.zeros(7))
            continue
        kl, lp, lq = _brute(model, p, c, ctx)
        n = len(c)
        torch.testing.assert_close(res["kl"][i, :n].double(), kl, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(res["logp_plain"][i, :n].double(), lp, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(res["logq"][i, :n].double(), lq, atol=2e-5, rtol=1e-4)
        assert (res["kl"][i, n:] == 0).all()
    assert float(res["kl"][res["mask"] > 0].max()) > 0.05  # the reference really changes q
    # the plain logprobs agree with the trainer's own logprob path
    batch = build_batch([TOK(p)["input_ids"] for p in PROMPTS[:2]], COMPLETIONS[:2], 0)
    logp, mask, _ = token_logprobs(model, batch)
    torch.testing.assert_close(res["logp_plain"][:2] * res["mask"][:2], logp, atol=1e-5, rtol=1e-5)


def test_batched_equals_one_at_a_time_and_padding_invariant():
    model = _model(1)
    together = teacher_scores(model, TOK, PROMPTS, COMPLETIONS, CONTEXTS, micro_batch=8, vocab_chunk=7)
    for i in range(len(PROMPTS)):
        alone = teacher_scores(model, TOK, PROMPTS[i:i + 1], COMPLETIONS[i:i + 1], CONTEXTS[i:i + 1])
        n = len(COMPLETIONS[i])
        for key in ("kl", "logp_plain", "logq"):
            torch.testing.assert_close(together[key][i, :n], alone[key][0, :n], atol=2e-5, rtol=1e-4)
    # a short row padded next to a much longer one scores the same as alone
    long_prompt = "1+2+3+4+5+6+7+8+9+10+11="
    pair = teacher_scores(model, TOK, [PROMPTS[2], long_prompt], [[6, 2], [4] * 12], ["5-3=2", "9" * 20],
                          micro_batch=2)
    alone = teacher_scores(model, TOK, [PROMPTS[2]], [[6, 2]], ["5-3=2"])
    torch.testing.assert_close(pair["kl"][0, :2], alone["kl"][0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(pair["logq"][0, :2], alone["logq"][0], atol=2e-5, rtol=1e-4)


def test_wrong_contexts_share_the_plain_pass_and_mode_is_restored():
    model = _model(2).train()
    wrong = ["12+34=47;#47", None, "5-3=3;#3", None, None]
    both = teacher_scores(model, TOK, PROMPTS, COMPLETIONS, CONTEXTS, wrong_contexts=wrong, micro_batch=2)
    assert model.training  # eval inside, training mode given back
    only_wrong = teacher_scores(model, TOK, PROMPTS, COMPLETIONS, wrong, micro_batch=2)
    assert both["has_wrong_teacher"].tolist() == [True, False, True, False, False]
    torch.testing.assert_close(both["kl_wrong"], only_wrong["kl"], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(both["logq_wrong"], only_wrong["logq"], atol=2e-5, rtol=1e-4)
    first = teacher_scores(model, TOK, PROMPTS, COMPLETIONS, CONTEXTS, micro_batch=2)
    torch.testing.assert_close(both["kl"], first["kl"], atol=2e-5, rtol=1e-4)
    assert float((both["kl_wrong"][0] - both["kl"][0]).abs().max()) > 1e-3  # different contexts differ
    with pytest.raises(ValueError):
        teacher_scores(model, TOK, PROMPTS, COMPLETIONS, CONTEXTS[:2])


def test_token_kl_paths_and_topk_tail_bucket():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 50, generator=g) * 3, torch.randn(6, 50, generator=g) * 3
    tgt = torch.randint(0, 50, (6,), generator=g)
    lp, lq = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    exact = (lp.exp() * (lp - lq)).sum(-1)
    for chunk in (1, 7, 50, 64):
        kl, lpy, lqy = token_kl(a, b, tgt, vocab_chunk=chunk)
        torch.testing.assert_close(kl.double(), exact, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lpy.double(), lp.gather(1, tgt[:, None]).squeeze(1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lqy.double(), lq.gather(1, tgt[:, None]).squeeze(1), atol=1e-5, rtol=1e-5)
    # temperature divides the logits
    kl_t, _, _ = token_kl(a, b, tgt, temperature=2.0)
    lp2, lq2 = torch.log_softmax(a.double() / 2, -1), torch.log_softmax(b.double() / 2, -1)
    torch.testing.assert_close(kl_t.double(), (lp2.exp() * (lp2 - lq2)).sum(-1), atol=1e-5, rtol=1e-5)
    # top-K + tail: K = V is exact; K < V is the coarse-grained KL, a lower bound
    kl_all, _, _ = token_kl(a, b, tgt, vocab_chunk=16, topk=50, topk_vocab_threshold=0)
    torch.testing.assert_close(kl_all.double(), exact, atol=1e-5, rtol=1e-5)
    kl5, _, _ = token_kl(a, b, tgt, vocab_chunk=16, topk=5, topk_vocab_threshold=0)
    idx = a.topk(5, dim=1).indices
    pk, qk = lp.exp().gather(1, idx), lq.exp().gather(1, idx)
    pt, qt = 1 - pk.sum(1), 1 - qk.sum(1)
    hand = (pk * (pk.log() - qk.log())).sum(1) + pt * (pt.log() - qt.log())
    torch.testing.assert_close(kl5.double(), hand, atol=1e-5, rtol=1e-4)
    assert (kl5.double() <= exact + 1e-6).all() and (kl5 >= -1e-6).all()
    assert float((exact - kl5.double()).max()) > 1e-3  # and really an approximation here


def test_hand_two_token_kl():
    # p = (0.5, 0.5), q = (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
    a = torch.zeros(1, 2)
    b = torch.tensor([[math.log(0.8), math.log(0.2)]])
    kl, lpy, lqy = token_kl(a, b, torch.tensor([1]))
    assert abs(float(kl) - (0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2))) < 1e-6
    assert abs(float(lpy) - math.log(0.5)) < 1e-6 and abs(float(lqy) - math.log(0.2)) < 1e-6


def test_top_p_restricts_both_distributions_to_the_plain_nucleus():
    # p = (0.6, 0.3, 0.1), q = (0.2, 0.2, 0.6); top_p 0.7 keeps p's nucleus {0, 1} (HF rule:
    # ascending cumulative 0.1 <= 0.3 drops token 2); both renormalised there
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.2, 0.6])
    a, b = p.log()[None, :], q.log()[None, :]
    kl, lpy, lqy = token_kl(a, b, torch.tensor([1]), top_p=0.7)
    ps, qs = torch.tensor([2 / 3, 1 / 3]), torch.tensor([0.5, 0.5])
    assert abs(float(kl) - float((ps * (ps / qs).log()).sum())) < 1e-6
    assert abs(float(lpy) - math.log(1 / 3)) < 1e-6 and abs(float(lqy) - math.log(0.5)) < 1e-6
    # a sampled token outside p's nucleus is kept (finite scores), as the learner's log-probs do
    kl2, lpy2, _ = token_kl(a, b, torch.tensor([2]), top_p=0.7)
    assert math.isfinite(float(kl2)) and abs(float(lpy2) - math.log(0.1)) < 1e-6
    # temperature 0.7 and top_p 0.7 on a real teacher pass: equals the brute force on the nucleus
    model = _model(1)
    out = teacher_scores(model, TOK, PROMPTS[:2], COMPLETIONS[:2], CONTEXTS[:2], temperature=0.7, top_p=0.7)
    for i in range(2):
        lp_rows, lq_rows = [], []
        for text in (PROMPTS[i], DEFAULT_TEMPLATE.format(c=CONTEXTS[i], prompt=PROMPTS[i])):
            ids = TOK(text)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + COMPLETIONS[i]])).logits[0]
            (lp_rows if text == PROMPTS[i] else lq_rows).append(logits[len(ids) - 1:len(ids) - 1 + len(COMPLETIONS[i])])
        kl_ref, _, _ = token_kl(lp_rows[0], lq_rows[0], torch.tensor(COMPLETIONS[i]), temperature=0.7, top_p=0.7)
        n = len(COMPLETIONS[i])
        torch.testing.assert_close(out["kl"][i, :n], kl_ref, atol=2e-5, rtol=1e-4)
        full, _, _ = token_kl(lp_rows[0], lq_rows[0], torch.tensor(COMPLETIONS[i]), temperature=0.7)
        assert not torch.allclose(full, kl_ref)  # the nucleus changed the scores
