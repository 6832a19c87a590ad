"""HF engine: behaviour logprobs/entropy vs a teacher-forced pass, eos cut, greedy,
reproducibility, and in-place weight swaps from verified snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import save_tiny, tiny_model, tiny_tokenizer

from actors.engines.hf import HFEngine
from protocol.weights import CANARY_TOL, WeightsError, canary_logprob, publish_snapshot

torch.set_num_threads(1)

PROMPTS = ["1+2=", "12+34+56=", "7=", "99-3+4="]  # different lengths -> left padding
EOS = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "m", seed=0)


def _teacher_forced(model, tok, prompt, completion, temperature):
    """log_softmax(z / T) at each completion position from one unpadded forward pass."""
    p = tok(prompt)["input_ids"]
    ids = torch.tensor([p + completion.tolist()])
    with torch.no_grad():
        z = model(input_ids=ids).logits[0, len(p) - 1 : -1].double()  # [T, V]
    return torch.log_softmax(z / temperature, dim=-1)  # [T, V]


def _check_shapes(s, max_new):
    T = len(s.token_ids)
    assert s.token_ids.dtype == np.int32 and s.logprobs.dtype == np.float32
    assert s.logprobs.shape == (T,) and s.entropy.shape == (T,)
    eos_at = np.flatnonzero(s.token_ids == EOS)
    if s.finish_reason == "stop":
        assert eos_at.tolist() == [T - 1]
    else:
        assert s.finish_reason == "length" and eos_at.size == 0 and T == max_new
    assert "<eos>" not in s.text and "<pad>" not in s.text


def test_sampled_logprobs_and_entropy_match_teacher_forcing(folder):
    eng = HFEngine(folder, seed=1)
    T, max_new = 0.8, 14
    out = eng.generate(PROMPTS, 3, temperature=T, max_new_tokens=max_new, batch_size=5)
    assert [len(o) for o in out] == [3] * len(PROMPTS)
    model, tok = tiny_model(0), tiny_tokenizer()
    worst_lp, worst_h, reasons = 0.0, 0.0, set()
    for prompt, samples in zip(PROMPTS, out):
        for s in samples:
            _check_shapes(s, max_new)
            reasons.add(s.finish_reason)
            ref = _teacher_forced(model, tok, prompt, s.token_ids, T)  # [T, V]
            ref_lp = ref.gather(-1, torch.from_numpy(s.token_ids).long()[:, None])[:, 0]
            ref_h = -(ref.exp() * ref).sum(-1)
            worst_lp = max(worst_lp, (ref_lp - torch.from_numpy(s.logprobs).double()).abs().max().item())
            worst_h = max(worst_h, (ref_h - torch.from_numpy(s.entropy).double()).abs().max().item())
            assert s.text == tok.decode(s.token_ids.tolist(), skip_special_tokens=True)
    assert worst_lp < 1e-4 and worst_h < 1e-4, (worst_lp, worst_h)
    assert reasons == {"stop", "length"}  # the eos cut is exercised both ways
    # samples of one prompt differ (it really samples)
    assert len({tuple(s.token_ids) for s in out[1]}) > 1


def test_top_p_logprobs_are_the_truncated_distribution(folder):
    eng = HFEngine(folder, seed=2)
    T, top_p = 1.0, 0.6
    out = eng.generate(PROMPTS[:2], 4, temperature=T, top_p=top_p, max_new_tokens=10)
    model, tok = tiny_model(0), tiny_tokenizer()
    n_truncated = 0
    for prompt, samples in zip(PROMPTS, out):
        for s in samples:
            ref = _teacher_forced(model, tok, prompt, s.token_ids, T).exp()  # [T, V] probs
            sorted_p, order = ref.sort(-1, descending=True)
            keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # nucleus
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            y = torch.from_numpy(s.token_ids).long()[:, None]
            assert keep.gather(-1, y).all()  # every sampled token is inside the nucleus
            mass = (ref * keep).sum(-1)
            n_truncated += int((mass < 0.999).sum())
            trunc = ref * keep / mass[:, None]
            ref_lp = trunc.gather(-1, y)[:, 0].log()
            ref_h = -(trunc * trunc.clamp_min(1e-300).log()).sum(-1)
            assert (ref_lp - torch.from_numpy(s.logprobs).double()).abs().max() < 1e-4
            assert (ref_h - torch.from_numpy(s.entropy).double()).abs().max() < 1e-4
    assert n_truncated > 10  # truncation actually happened


def test_greedy_is_n_identical_argmax(folder):
    eng = HFEngine(folder)
    max_new = 10
    out = eng.generate(PROMPTS, 3, temperature=0.0, max_new_tokens=max_new, batch_size=2)
    model, tok = tiny_model(0), tiny_tokenizer()
    for prompt, samples in zip(PROMPTS, out):
        assert len(samples) == 3
        first = samples[0]
        _check_shapes(first, max_new)
        for s in samples[1:]:
            assert np.array_equal(s.token_ids, first.token_ids) and s.text == first.text
            assert np.array_equal(s.logprobs, first.logprobs)
        ref = _teacher_forced(model, tok, prompt, first.token_ids, 1.0)
        assert torch.equal(ref.argmax(-1), torch.from_numpy(first.token_ids).long())
        ref_lp = ref.gather(-1, torch.from_numpy(first.token_ids).long()[:, None])[:, 0]
        assert (ref_lp - torch.from_numpy(first.logprobs).double()).abs().max() < 1e-4
    # same answer alone as in a left-padded batch
    alone = eng.generate([PROMPTS[2]], 1, temperature=0.0, max_new_tokens=max_new)[0][0]
    assert np.array_equal(alone.token_ids, out[2][0].token_ids)


def test_seeded_runs_reproduce_and_leave_global_rng_alone(folder):
    kw = dict(temperature=1.0, max_new_tokens=8)
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    a = HFEngine(folder, seed=5)
    torch.manual_seed(123)
    ra = a.generate(PROMPTS, 2, **kw)
    assert torch.equal(torch.rand(3), expected_global)
    rb = HFEngine(folder, seed=5).generate(PROMPTS, 2, **kw)
    rc = HFEngine(folder, seed=6).generate(PROMPTS, 2, **kw)
    ids = lambda r: [tuple(s.token_ids) for o in r for s in o]  # noqa: E731
    assert ids(ra) == ids(rb)
    assert ids(ra) != ids(rc)
    assert ids(a.generate(PROMPTS, 2, **kw)) != ids(ra)  # the stream advances


def test_load_weights_good_and_corrupted(tmp_path, folder):
    eng = HFEngine(folder)
    assert eng.version == 0
    d0, c0 = eng.digest(), eng.canary()
    assert abs(c0 - canary_logprob(tiny_model(0), tiny_tokenizer())) < 1e-9

    learner = tiny_model(1)
    root = tmp_path / "weights"
    good = publish_snapshot(root, 4, learner, tiny_tokenizer())
    bad = publish_snapshot(root, 5, tiny_model(2), tiny_tokenizer())
    path = root / "v000005" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="model.safetensors"):
        eng.load_weights(root / "v000005", bad["manifest_sha256"])
    assert eng.digest() == d0 and eng.canary() == c0 and eng.version == 0
    with pytest.raises(WeightsError, match="manifest.json sha256 mismatch"):
        eng.load_weights(root / "v000004", "0" * 64)
    assert eng.digest() == d0

    params_before = {n: p.data_ptr() for n, p in eng.model.named_parameters()}
    eng.load_weights(root / "v000004", good["manifest_sha256"])
    assert eng.version == 4
    assert eng.digest() == good["digest"] != d0
    assert {n: p.data_ptr() for n, p in eng.model.named_parameters()} == params_before  # in place
    learner_canary = canary_logprob(learner, tiny_tokenizer())
    assert abs(eng.canary() - learner_canary) < CANARY_TOL
    assert abs(eng.canary() - c0) > 100 * CANARY_TOL
    # a snapshot folder is also a valid starting folder, with its version
    assert HFEngine(root / "v000004").version == 4


def test_load_weights_wrong_architecture_is_rejected_untouched(tmp_path, folder):
    from transformers import LlamaForCausalLM

    eng = HFEngine(folder)
    d0 = eng.digest()
    cfg = tiny_model(0).config
    cfg.intermediate_size = 48
    other = LlamaForCausalLM(cfg)
    info = publish_snapshot(tmp_path / "w", 1, other, tiny_tokenizer())
    with pytest.raises(WeightsError, match="shape"):
        eng.load_weights(info["folder"], info["manifest_sha256"])
    assert eng.digest() == d0 and eng.version == 0


def test_hidden_summaries_match_the_learners_forward_pass(folder):
    """hidden_k: the projected state captured while sampling equals the one the learner
    computes teacher-forced for the same tokens (learner/summaries.py), up to float16."""
    from learner.credit.hidden import hidden_summaries
    from protocol.summaries import HIDDEN_K

    eng = HFEngine(folder, seed=3)
    out = eng.generate(PROMPTS, 2, temperature=1.0, max_new_tokens=10, batch_size=8, hidden_k=HIDDEN_K)
    samples = [(p, s) for p, group in zip(PROMPTS, out) for s in group]
    for _, s in samples:
        assert s.hidden.dtype == np.float16 and s.hidden.shape == (len(s.token_ids), HIDDEN_K)
    tok = eng.tokenizer
    ref = hidden_summaries(eng.model, [tok(p)["input_ids"] for p, _ in samples],
                           [s.token_ids.tolist() for _, s in samples], tok.pad_token_id, micro_batch=3)
    for (_, s), r in zip(samples, ref):
        assert r.shape == s.hidden.shape
        np.testing.assert_allclose(s.hidden.astype(np.float32), r.astype(np.float32), atol=2e-2, rtol=1e-2)
    assert float(np.abs(np.concatenate([r for r in ref])).mean()) > 0.05  # not all zeros
    plain = eng.generate(PROMPTS, 2, temperature=1.0, max_new_tokens=10, batch_size=8)
    assert all(s.hidden is None for group in plain for s in group)
