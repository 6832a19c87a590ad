"""Per-step token credit: contexts -> teacher pass -> λ schedule -> weights -> diagnostics (DESIGN §6).

What it does, once per optimiser step on the whole batch (every sample of every group):
  pick_contexts (a correct sibling, never the sample itself; else the newest banked
  solution of the prompt; else none) -> teacher_scores (no grad: KL(p_t || q_t) of the
  plain vs the reference-conditioned model, only when the variant needs it) ->
  LambdaSchedule.update (warm-up ramp and reliability gate) -> the variant's weights
  w [N, T] (mean 1 per sequence) -> first-error diagnostics where the verifier named the
  first wrong character (`arith`) -> bank the verified solutions.
For `uniform` none of this runs: w = mask, no teacher pass, no cost.

What it does not do: it computes no loss and never touches the optimiser; it does not
place the teacher pass on actors (DESIGN §6 "placement": learner only for now).
"""

from __future__ import annotations

import random
import time

import torch

from learner.credit import REGISTRY, CreditBatch, check_weights
from learner.credit_html import write_credit_html
from learner.credit_schedule import LambdaSchedule, score_means
from learner.diagnostics import credit_diagnostics, first_wrong_token_index
from learner.logprobs import pad_right
from learner.solution_bank import SolutionBank, pick_contexts, pick_wrong_contexts
from learner.summaries import hidden_summaries
from learner.teacher import teacher_scores
from protocol.tokens import pad_id
from protocol.summaries import HIDDEN_K

TEACHER_METHODS = {"sc_kl", "sc_prefix", "sc_unshared", "sc_pos", "sc_contrast", "sc_signed", "shuffled"}
CORRECT = 1.0  # reward of a verified solution (banked, usable as a context)


class CreditStep:
    def __init__(self, cfg, model, tokenizer, seed: int, encode=None):
        self.cfg = cfg  # CreditConfig
        self.model, self.tok = model, tokenizer
        # prompt text -> token ids in the run's format (protocol/prompts.py); default raw
        self.encode = encode or (lambda text: list(tokenizer(text)["input_ids"]))
        self.fn = REGISTRY[cfg.method]
        self.bank = SolutionBank()
        self.rng = random.Random(seed)
        self.schedule = LambdaSchedule(lam_max=cfg.lam_max, warmup_steps=cfg.warmup_steps,
                                       ramp_steps=cfg.ramp_steps, gate_ratio=cfg.gate_ratio)
        self.needs_teacher = cfg.method in TEACHER_METHODS
        self.last: tuple | None = None

    def weights(self, groups: list, completions: list[list[int]], adv: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """w [N, T] for the flattened samples of `groups` (T = longest completion)."""
        T = max(len(c) for c in completions)
        mask = pad_right([[1.0] * len(c) for c in completions], T, 0.0)  # [N,T]
        token_ids = pad_right(completions, T, 0).long()  # [N,T]
        group_index = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.samples], dtype=torch.long)  # [N]
        stats: dict = {}
        fields = {}
        if all(s.get("entropy") is not None for g in groups for s in g.samples):
            fields["entropy"] = pad_right([s["entropy"].astype("float32") for g in groups for s in g.samples], T, 0.0)
        if self.needs_teacher:
            t = time.perf_counter()
            fields.update(self.teacher(groups, completions, T))
            stats["time_teacher"] = time.perf_counter() - t
            mean_bad, mean_good = score_means(fields["teacher_kl"], mask, adv, fields["has_teacher"])
            lam = self.schedule.update(step, mean_bad, mean_good)
            stats.update(self.schedule.metrics())
        elif self.cfg.method == "hidden":
            t = time.perf_counter()
            fields["hidden"], stats["credit/hidden_from_actors"] = self.hidden_states(groups, completions, T)
            stats["time_teacher"] = time.perf_counter() - t
            lam = self.schedule.ramp(step)
        else:  # uniform, entropy: no teacher, so no gate; the same warm-up ramp
            lam = 0.0 if self.cfg.method == "uniform" else self.schedule.ramp(step)
        batch = CreditBatch(token_ids=token_ids, mask=mask, adv=adv, group_index=group_index,
                            shuffle_seed=self.rng.randrange(2**31), **fields)
        w = self.fn(batch, lam=lam)  # [N,T]
        check_weights(w, mask)
        stats["credit/lambda"] = float(lam)
        # diagnostics over the rows the variant could reweight (a teacher row, where one is needed)
        active = fields.get("has_teacher") if self.needs_teacher else None
        stats.update(self.diagnostics(groups, completions, w, mask, active))
        self.bank_solutions(groups)
        return w, stats

    def hidden_states(self, groups: list, completions: list[list[int]], T: int) -> tuple[torch.Tensor, float]:
        """[N, T, k] projected hidden states: the actor's where it sent them, else computed
        here (learner/summaries.py); and the share of rows that came from actors."""
        samples = [(g, s) for g in groups for s in g.samples]
        have = [s.get("hidden") is not None and s["hidden"].shape[1] == HIDDEN_K for _, s in samples]
        missing = [i for i, ok in enumerate(have) if not ok]
        computed = dict(zip(missing, hidden_summaries(
            self.model, [self.encode(samples[i][0].prompt) for i in missing],
            [completions[i] for i in missing], pad_id(self.tok),
            micro_batch=self.cfg.teacher_micro_batch))) if missing else {}
        h = torch.zeros((len(samples), T, HIDDEN_K), dtype=torch.float32)  # [N, T, k]
        for i, (_, s) in enumerate(samples):
            a = s["hidden"] if have[i] else computed[i]  # [T_i, k] float16
            h[i, : a.shape[0]] = torch.from_numpy(a.astype("float32"))
        return h, sum(have) / len(have)

    def teacher(self, groups: list, completions: list[list[int]], T: int) -> dict:
        contexts, wrong, prompts = [], [], []
        for g in groups:
            texts = [s["text"] for s in g.samples]
            contexts += pick_contexts(texts, g.rewards, g.prompt_id, self.bank, self.rng,
                                      allow_identical=self.cfg.allow_identical_context)
            if self.cfg.method == "sc_contrast":
                wrong += pick_wrong_contexts(texts, g.rewards, self.rng)
            prompts += [g.prompt] * len(texts)
        out = teacher_scores(self.model, self.tok, prompts, completions, contexts,
                             wrong_contexts=wrong or None, template=self.cfg.template, encode=self.encode,
                             micro_batch=self.cfg.teacher_micro_batch)
        out = {k: v.cpu() for k, v in out.items()}  # credit runs on CPU tensors (the trainer moves w)
        fields = {"teacher_kl": out["kl"][:, :T], "teacher_logq": out["logq"][:, :T],
                  "plain_logp": out["logp_plain"][:, :T], "has_teacher": out["has_teacher"]}
        if wrong:
            fields.update(teacher_kl_wrong=out["kl_wrong"][:, :T], has_wrong_teacher=out["has_wrong_teacher"])
        return fields

    def diagnostics(self, groups: list, completions: list[list[int]], w: torch.Tensor, mask: torch.Tensor,
                    active: torch.Tensor | None = None) -> dict:
        """First-error mass / AUROC, where the verifier names the first wrong character
        (rows outside `active` [N] bool are left out)."""
        first = []
        for row, (g, i) in enumerate((g, i) for g in groups for i in range(len(g.samples))):
            char = (g.details[i] or {}).get("first_wrong") if g.rewards[i] < CORRECT else None
            if active is not None and not bool(active[row]):
                char = None
            if char is None:
                first.append(-1)
                continue
            pieces = [self.tok.decode([t], skip_special_tokens=True) for t in g.samples[i]["token_ids"].tolist()]
            first.append(first_wrong_token_index(pieces, int(char)))
        first_wrong = torch.tensor(first, dtype=torch.long)  # [N], -1 = no located error
        self.last = (groups, w, first)  # for credit.html
        if not (first_wrong >= 0).any():
            return {}
        return credit_diagnostics(w, mask, first_wrong)

    def write_html(self, path, title: str) -> None:
        """credit.html of the last batch (see learner/credit_html.py)."""
        groups, w, first = self.last
        pieces = [[self.tok.decode([t], skip_special_tokens=True) for t in s["token_ids"].tolist()]
                  for g in groups for s in g.samples]
        rewards = [r for g in groups for r in g.rewards]
        prompts = [g.prompt for g in groups for _ in g.samples]
        write_credit_html(path, title, pieces, w, rewards, first, prompts)

    def bank_solutions(self, groups: list) -> None:
        for g in groups:
            for s, r in zip(g.samples, g.rewards):
                if r >= CORRECT:
                    self.bank.add(g.prompt_id, s["text"])
