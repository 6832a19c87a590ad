"""CreditStep: the per-step credit pipeline on a real (tiny, random) model."""

import numpy as np
import pytest
import torch

from learner.credit.step import CreditStep
from learner.hub import Group
from learner.model import build_tiny_model, build_tokenizer
from protocol.config import CreditConfig

torch.set_num_threads(1)


def _groups(tok):
    solution = "12+34=46;46+56=102;#102"
    wrong = "12+34=46;46+56=101;#101"
    groups = []
    for gi in range(2):
        samples, rewards, details = [], [], []
        for i in range(4):
            text = solution if i % 2 == 0 else wrong
            ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            samples.append({"token_ids": np.array(ids, dtype=np.int32), "text": text,
                            "logprobs": np.full(len(ids), -1.0, np.float32),
                            "entropy": np.linspace(0.1, 1.0, len(ids)).astype(np.float16)})
            rewards.append(1.0 if i % 2 == 0 else 0.0)
            details.append({"reason": "ok"} if i % 2 == 0 else {"reason": "wrong", "first_wrong": 20})
        groups.append(Group(f"g{gi}@0", f"p{gi}", "12+34+56=", 0, samples, rewards, details))
    return groups


def _run(method, **kw):
    tok = build_tokenizer()
    step = CreditStep(CreditConfig(method=method, warmup_steps=0, ramp_steps=0, gate_ratio=0.0, **kw),
                      build_tiny_model(0), tok, seed=0)
    groups = _groups(tok)
    completions = [s["token_ids"].tolist() for g in groups for s in g.samples]
    adv = torch.tensor([1.0, -1.0] * 4)
    return step, groups, step.weights(groups, completions, adv, step=5)


@pytest.mark.parametrize("method", ["uniform", "sc_kl", "sc_prefix", "sc_unshared", "sc_pos", "sc_contrast", "sc_signed", "entropy",
                                    "hidden", "shuffled"])
def test_weights_have_mean_one_and_the_expected_cost(method):
    step, groups, (w, stats) = _run(method)
    n_tokens = len(groups[0].samples[0]["token_ids"])
    assert w.shape == (8, n_tokens)
    assert torch.allclose(w.mean(dim=1), torch.ones(8), atol=1e-4) and (w >= 0).all()
    assert ("time_teacher" in stats) == (method not in ("uniform", "entropy"))
    assert stats["credit/first_error_mass"] >= 0.0  # arith-style details name the first wrong char
    assert 0.0 <= stats["credit/first_error_auroc"] <= 1.0
    if method in ("sc_kl", "entropy"):
        assert not torch.allclose(w, torch.ones_like(w)), "a reweighting variant at λ=0.5 changed nothing"


def test_verified_solutions_are_banked():
    step, _, _ = _run("sc_kl")
    assert step.bank.newest("p0", exclude="") == "12+34=46;46+56=102;#102"


def test_credit_html_marks_the_first_error_and_escapes_text(tmp_path):
    step, _, _ = _run("sc_kl")
    step.write_html(tmp_path / "credit.html", "sc_kl <step 5>")
    page = (tmp_path / "credit.html").read_text()
    assert "sc_kl &lt;step 5&gt;" in page
    assert page.count("outline: 2px solid red") == 4  # the 4 wrong samples, first wrong char at index 20
    assert page.count("<tr><td>") == 8


def test_hidden_uses_the_actors_summaries_and_computes_missing_ones_itself():
    step, groups, (w_computed, stats) = _run("hidden")
    assert stats["credit/hidden_from_actors"] == 0.0
    assert not torch.allclose(w_computed, torch.ones_like(w_computed))  # correct vs wrong rows differ
    # the same summaries arriving from the actors give the same weights without a forward pass
    tok = step.tok
    completions = [s["token_ids"].tolist() for g in groups for s in g.samples]
    h, _ = step.hidden_states(groups, completions, len(completions[0]))  # [N, T, k]
    for row, s in enumerate(x for g in groups for x in g.samples):
        s["hidden"] = h[row].numpy().astype(np.float16)
    again = CreditStep(step.cfg, step.model, tok, seed=0)
    w_sent, stats_sent = again.weights(groups, completions, torch.tensor([1.0, -1.0] * 4), step=5)
    assert stats_sent["credit/hidden_from_actors"] == 1.0
    assert torch.allclose(w_sent, w_computed, atol=1e-3)
    # a summary of the wrong width is recomputed, not trusted
    groups[0].samples[0]["hidden"] = np.zeros((len(completions[0]), 8), np.float16)
    _, stats_bad = again.weights(groups, completions, torch.tensor([1.0, -1.0] * 4), step=5)
    assert stats_bad["credit/hidden_from_actors"] == 7 / 8


def test_credit_state_survives_a_real_checkpoint(tmp_path):
    """λ schedule (gate EMA), solution bank and credit RNG go through save_checkpoint /
    load_checkpoint files: the resumed step is the step the uninterrupted run takes."""
    from learner.checkpoint import load_checkpoint, save_checkpoint

    tok = build_tokenizer()
    model = build_tiny_model(0)
    cfg = CreditConfig(method="shuffled", warmup_steps=0, ramp_steps=0, gate_ratio=0.0)
    groups = _groups(tok)
    completions = [s["token_ids"].tolist() for g in groups for s in g.samples]
    adv = torch.tensor([1.0, -1.0] * 4)
    run = CreditStep(cfg, model, tok, seed=3)
    for step in range(3):
        run.weights(groups, completions, adv, step=step)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    save_checkpoint(tmp_path / "checkpoint", model, tok, opt, {"step": 3, "credit": run.state_dict()}, cursor=0)
    state = load_checkpoint(tmp_path / "checkpoint", opt)
    resumed = CreditStep(cfg, model, tok, seed=3)
    resumed.load_state_dict(state["credit"])
    assert resumed.state_dict() == run.state_dict()
    assert resumed.schedule.ratio_ema is not None and len(resumed.bank) == 2
    w_run, st_run = run.weights(groups, completions, adv, step=3)
    w_res, st_res = resumed.weights(groups, completions, adv, step=3)
    assert torch.equal(w_run, w_res) and st_run["credit/lambda"] == st_res["credit/lambda"]
    fresh = CreditStep(cfg, model, tok, seed=3)  # what a resume without the state used to do
    assert not torch.equal(fresh.weights(groups, completions, adv, step=3)[0], w_run)
    with pytest.raises(ValueError, match="method"):
        CreditStep(CreditConfig(method="sc_kl"), model, tok, seed=3).load_state_dict(state["credit"])


@pytest.mark.parametrize("method", ["verifier", "sc_cut", "sc_cut_shuffled", "sc_grpo", "sc_grpo_rlsd"])
def test_round3_arms_cut_wrong_samples_and_log_weight_stats(method):
    step, groups, (w, stats) = _run(method)
    correct = torch.tensor([True, False] * 4)
    assert torch.equal(w[correct], torch.ones_like(w[correct]))  # correct samples keep w = 1
    assert stats["credit/w_max"] <= 4.0 and not torch.equal(w[~correct], torch.ones_like(w[~correct]))
    if method.startswith("sc_grpo"):  # s / s̄ over the reweighted tokens: batch mean 1 while no cap binds
        assert stats["credit/neg_weight_kept"] <= 1.0 + 1e-6
    else:  # a cut drops the tokens after it
        assert stats["credit/neg_weight_kept"] < 1.0
    for key in ("credit/w_std", "credit/w_sq_mean", "credit/neg_adv_total", "credit/lambda"):
        assert key in stats
    if method == "verifier":  # the verifier names character 20: w = 1 through token 20, 0 after
        assert torch.equal(w[1], (torch.arange(w.shape[1]) <= 20).float())
        assert stats["credit/first_error_mass"] == pytest.approx(1 / 21)
