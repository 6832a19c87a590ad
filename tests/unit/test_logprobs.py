"""learner/logprobs.py against per-row unpadded forwards and against HF generate."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from learner.logprobs import build_batch, pad_right, token_logprobs

torch.set_num_threads(1)

PAD, EOS = 0, 2


def _model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=20,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=EOS,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # default init gives near-uniform logits; give them structure
        model.lm_head.weight.mul_(10.0)
    return model.eval()


PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 5, 6, 8], [1, 11, 12]]
COMPLETIONS = [[8, 9, 10], [13, 14, 15, 16, 17], [4], []]


def test_build_batch_layout():
    b = build_batch([[5, 6], [7]], [[8, 9, 10], [11]], pad_id=0)
    assert torch.equal(b["input_ids"], torch.tensor([[5, 6, 8, 9, 10], [0, 0, 0, 7, 11]]))
    assert torch.equal(b["attention_mask"], torch.tensor([[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]))
    assert torch.equal(b["position_ids"], torch.tensor([[0, 1, 2, 3, 4], [0, 0, 0, 0, 1]]))
    assert torch.equal(b["completion_mask"], torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1]]))
    assert b["n_completion"] == 3
    with pytest.raises(ValueError):
        build_batch([[]], [[1]], pad_id=0)


def _reference(model, prompt, completion):
    """Unpadded single-row forward: logits at p - 1 + t predict completion token t."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()  # [L, V]
    p = len(prompt)
    logsm = torch.log_softmax(logits[p - 1 : p - 1 + len(completion)], -1)  # [n, V]
    lp = logsm.gather(1, torch.tensor(completion)[:, None]).squeeze(1)
    ent = -(logsm.exp() * logsm).sum(-1)
    return lp, ent


def test_padded_batch_equals_unpadded_rows():
    model = _model()
    batch = build_batch(PROMPTS, COMPLETIONS, pad_id=PAD)
    with torch.no_grad():
        logp, mask, ent = token_logprobs(model, batch, with_entropy=True)
    assert logp.shape == (4, 5) and mask.shape == (4, 5) and ent.shape == (4, 5)
    expected_mask = torch.tensor(
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.float32
    )
    assert torch.equal(mask, expected_mask)
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        n = len(c)
        if n:
            ref_lp, ref_ent = _reference(model, p, c)
            torch.testing.assert_close(logp[i, :n].double(), ref_lp, atol=1e-5, rtol=0)
            torch.testing.assert_close(ent[i, :n].double(), ref_ent, atol=1e-5, rtol=0)
        assert torch.all(logp[i, n:] == 0) and torch.all(ent[i, n:] == 0)
    # logprobs are informative: not all equal to -log V (uniform)
    assert (logp[mask > 0] + torch.log(torch.tensor(20.0))).abs().max() > 0.5


def test_row_chunking_gives_same_result(monkeypatch):
    import learner.logprobs as lp_mod

    model = _model()
    batch = build_batch(PROMPTS, COMPLETIONS, pad_id=PAD)
    with torch.no_grad():
        full, _, ent_full = token_logprobs(model, batch, with_entropy=True)
        monkeypatch.setattr(lp_mod, "LOGSOFTMAX_CHUNK_ELEMS", 1)  # one row per chunk
        chunked, _, ent_chunked = token_logprobs(model, batch, with_entropy=True)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent_chunked, ent_full, atol=1e-6, rtol=0)


def test_temperature_and_gradient():
    model = _model()
    batch = build_batch(PROMPTS[:2], COMPLETIONS[:2], pad_id=PAD)
    logp, mask, ent = token_logprobs(model, batch, temperature=0.5)
    assert ent is None and logp.requires_grad
    # temperature 0.5: log_softmax(2 * logits) of the unpadded row 0
    ids = torch.tensor([PROMPTS[0] + COMPLETIONS[0]])
    with torch.no_grad():
        lg = model(input_ids=ids).logits[0, 3:6].double() / 0.5
    ref = torch.log_softmax(lg, -1).gather(1, torch.tensor([[8], [9], [10]])).squeeze(1)
    torch.testing.assert_close(logp[0, :3].detach().double(), ref, atol=1e-5, rtol=0)
    (logp * mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def _generate(model, prompts, **kw):
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (L - len(p)) + p for p in prompts])
    att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(1)
    out = model.generate(
        input_ids=ids,
        attention_mask=att,
        do_sample=True,
        max_new_tokens=8,
        return_dict_in_generate=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
        **kw,
    )
    new = out.sequences[:, L:]  # [B, steps]
    completions = []
    for row in new.tolist():  # cut after the first eos (later positions are padding)
        completions.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return new, completions, out


def test_matches_generate_logits_left_padded():
    model = _model()
    prompts = [[1, 5, 6, 7, 8], [1, 9], [1, 3, 4]]
    new, completions, out = _generate(model, prompts, output_logits=True, top_k=0, top_p=1.0)
    gen_logits = torch.stack(out.logits, dim=1).double()  # [B, steps, V]
    gen_lp = torch.log_softmax(gen_logits, -1).gather(2, new[..., None]).squeeze(2)  # [B, steps]
    batch = build_batch(prompts, completions, pad_id=PAD)
    with torch.no_grad():
        logp, mask, _ = token_logprobs(model, batch)
    assert sum(len(c) for c in completions) >= 8  # something was sampled
    for i, c in enumerate(completions):
        torch.testing.assert_close(logp[i, : len(c)].double(), gen_lp[i, : len(c)], atol=1e-4, rtol=0)
        assert mask[i].sum().item() == len(c)


def test_matches_generate_scores_with_temperature():
    # output_scores are the processed logits (here: divided by temperature 0.7)
    model = _model(seed=3)
    prompts = [[1, 4, 4, 4], [1, 10], [1, 2, 3, 5, 7, 9]]
    new, completions, out = _generate(model, prompts, output_scores=True, temperature=0.7, top_k=0, top_p=1.0)
    scores = torch.stack(out.scores, dim=1).double()  # [B, steps, V]
    gen_lp = torch.log_softmax(scores, -1).gather(2, new[..., None]).squeeze(2)
    with torch.no_grad():
        logp, _, _ = token_logprobs(model, build_batch(prompts, completions, pad_id=PAD), temperature=0.7)
    for i, c in enumerate(completions):
        torch.testing.assert_close(logp[i, : len(c)].double(), gen_lp[i, : len(c)], atol=1e-4, rtol=0)


def test_all_empty_completions():
    model = _model()
    logp, mask, ent = token_logprobs(model, build_batch([[1, 2], [3]], [[], []], pad_id=PAD), with_entropy=True)
    assert logp.shape == (2, 0) and mask.shape == (2, 0) and ent.shape == (2, 0)


def test_pad_right():
    import numpy as np

    out = pad_right([np.array([-0.1, -0.2], dtype=np.float32), [-0.3], []], 3, 0.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[-0.1, -0.2, 0.0], [-0.3, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    ids = pad_right([[4, 5], [6]], 2, 0)
    assert ids.dtype == torch.long and torch.equal(ids, torch.tensor([[4, 5], [6, 0]]))
    with pytest.raises(ValueError):
        pad_right([[1, 2, 3]], 2, 0)


def test_matches_the_actor_at_temperature_and_top_p_0_7(tmp_path):
    """The learner's log-probs are those of the distribution an HF actor sampled from at
    temperature 0.7 and top_p 0.7 (DESIGN §5): the behaviour weight b = π_prox / μ is 1."""
    from tiny import save_tiny, tiny_tokenizer

    from actors.engines.hf import HFEngine
    from learner.logprobs import nucleus_mask

    folder = save_tiny(tmp_path / "m", seed=0)
    eng = HFEngine(folder, seed=4)
    tok = tiny_tokenizer()
    prompts = ["1+2=", "12+34+56=", "99-3+4="]
    out = eng.generate(prompts, 4, temperature=0.7, top_p=0.7, max_new_tokens=10)
    p_ids = [tok(p)["input_ids"] for p in prompts for _ in range(4)]
    samples = [s for group in out for s in group]
    batch = build_batch(p_ids, [s.token_ids.tolist() for s in samples], pad_id=tok.pad_token_id)
    with torch.no_grad():
        logp, mask, _ = token_logprobs(eng.model, batch, temperature=0.7, top_p=0.7)
        plain, _, _ = token_logprobs(eng.model, batch, temperature=0.7)  # no nucleus: differs
    behav = pad_right([s.logprobs for s in samples], logp.shape[1], 0.0)
    assert (logp - behav).abs().max() < 1e-4
    assert (plain - behav)[mask > 0].abs().max() > 1e-2  # truncation mattered on some token
    # the sampled token is kept even when it lies outside the nucleus
    lp = torch.log_softmax(torch.tensor([[2.0, 1.0, -3.0]]), -1)
    assert nucleus_mask(lp, 0.5).tolist() == [[True, False, False]]
    assert nucleus_mask(lp, 0.5, keep=torch.tensor([2])).tolist() == [[True, False, True]]
