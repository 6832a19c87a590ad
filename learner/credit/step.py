"""Per-step token credit: inputs -> λ -> weights -> diagnostics -> bank (DESIGN §6).

What it does, once per optimiser step on the whole batch (every sample of every group),
driven by the method's spec in the one registry (`protocol/credit_methods.py`):
  first_wrong (the verifier's first wrong character of each wrong sample, mapped to a
  token with the tokenizer's offsets) -> inputs the spec asks for: the teacher pass
  (pick_contexts: a correct sibling, never the sample itself; else the newest banked
  solution of the prompt; else none -> teacher_scores: no grad, KL(p_t || q_t) of the plain
  vs the reference-conditioned model at the actors' temperature and top_p), a wrong-sibling
  pass, entropy or hidden summaries -> λ from the spec's schedule (and the reliability
  gate where the spec is gated) -> the variant's weights w [N, T], checked against its
  contract (mean one, or only bounded) -> weight statistics and first-error diagnostics
  -> bank the verified solutions.
For `uniform` no teacher pass runs: w = mask, no cost.
`state_dict` / `load_state_dict` carry the λ schedule, the solution bank and the credit
RNG (context choice, shuffles) through the trainer's checkpoint, so a resumed run
continues them instead of restarting them.

What it does not do: it computes no loss and never touches the optimiser; it does not
place the teacher pass on actors (DESIGN §6 "placement": learner only for now).
"""

from __future__ import annotations

import random
import time

import torch

from learner.credit.batch import CreditBatch, check_weights
from learner.credit.contexts import SolutionBank, pick_contexts, pick_wrong_contexts
from learner.credit.diagnostics import credit_diagnostics, first_wrong_token_index, token_pieces, weight_stats
from learner.credit.hidden import hidden_summaries
from learner.credit.html import write_credit_html
from learner.credit.registry import variant
from learner.credit.schedule import LambdaSchedule, score_means
from learner.credit.teacher import teacher_scores
from learner.logprobs import pad_right
from protocol.summaries import HIDDEN_K
from protocol.tokens import pad_id

CORRECT = 1.0  # reward of a verified solution (banked, usable as a context)


class CreditStep:
    def __init__(self, cfg, model, tokenizer, seed: int, *, encode=None, temperature: float = 1.0, top_p: float = 1.0):
        self.cfg = cfg  # CreditConfig
        self.model, self.tok = model, tokenizer
        # prompt text -> token ids in the run's format (protocol/prompts.py); default raw
        self.encode = encode or (lambda text: list(tokenizer(text)["input_ids"]))
        self.variant = variant(cfg.method)
        self.spec = self.variant.spec
        self.temperature, self.top_p = temperature, top_p  # the actors' sampling distribution
        self.bank = SolutionBank()
        self.rng = random.Random(seed)
        self.schedule = LambdaSchedule.for_method(self.spec, cfg)
        self.needs_teacher = self.spec.needs_teacher
        self.last: tuple | None = None

    # --- the step --------------------------------------------------------------------
    def weights(self, groups: list, completions: list[list[int]], adv: torch.Tensor, step: int) -> tuple[torch.Tensor, dict]:
        """w [N, T] for the flattened samples of `groups` (T = longest completion), and stats."""
        T = max(len(c) for c in completions)
        mask = pad_right([[1.0] * len(c) for c in completions], T, 0.0)  # [N,T]
        first = self.first_wrong(groups)  # [N] long, -1 = correct or unknown
        stats: dict = {}
        fields = self.inputs(groups, completions, T, stats)
        if "first_wrong" in self.spec.inputs:
            fields["first_wrong"] = first
        lam = self.lam(step, fields, mask, adv, stats)
        batch = CreditBatch(token_ids=pad_right(completions, T, 0).long(), mask=mask, adv=adv,
                            group_index=self.group_index(groups), shuffle_seed=self.rng.randrange(2**31), **fields)
        w = self.variant.fn(batch, lam=lam)  # [N,T]
        check_weights(w, mask, mean_one=self.spec.mean_one)
        stats["credit/lambda"] = float(lam)
        stats.update(weight_stats(w, mask, adv))
        # first-error diagnostics over the rows the variant could reweight (a teacher row, where one is needed)
        active = fields.get("has_teacher") if self.needs_teacher else None
        stats.update(self.diagnostics(groups, w, mask, first, active))
        self.bank_solutions(groups)
        return w, stats

    def inputs(self, groups: list, completions: list[list[int]], T: int, stats: dict) -> dict:
        """The CreditBatch fields the spec needs (teacher pass, summaries); times the costly ones."""
        fields: dict = {}
        if all(s.get("entropy") is not None for g in groups for s in g.samples):
            fields["entropy"] = pad_right([s["entropy"].astype("float32") for g in groups for s in g.samples], T, 0.0)
        t = time.perf_counter()
        if self.needs_teacher:
            fields.update(self.teacher(groups, completions, T))
        if "hidden" in self.spec.inputs:
            fields["hidden"], stats["credit/hidden_from_actors"] = self.hidden_states(groups, completions, T)
        if self.needs_teacher or "hidden" in self.spec.inputs:
            stats["time_teacher"] = time.perf_counter() - t
        return fields

    def lam(self, step: int, fields: dict, mask: torch.Tensor, adv: torch.Tensor, stats: dict) -> float:
        """λ of this step: the spec's schedule, fed the teacher's score means when it has them."""
        bad = good = None
        if "teacher_kl" in fields:
            bad, good = score_means(fields["teacher_kl"], mask, adv, fields["has_teacher"])
        lam = self.schedule.update(step, bad, good)
        if self.spec.gated:
            stats.update(self.schedule.metrics())
        return lam

    @staticmethod
    def group_index(groups: list) -> torch.Tensor:  # [N] long
        return torch.tensor([gi for gi, g in enumerate(groups) for _ in g.samples], dtype=torch.long)

    # --- inputs ----------------------------------------------------------------------
    def first_wrong(self, groups: list) -> torch.Tensor:
        """[N] long: token index of the verifier's first wrong character, -1 where the sample
        is correct or the verifier names none (token_pieces: the tokenizer's offsets)."""
        first = []
        for g in groups:
            for i, s in enumerate(g.samples):
                char = (g.details[i] or {}).get("first_wrong") if g.rewards[i] < CORRECT else None
                first.append(-1 if char is None else
                             first_wrong_token_index(token_pieces(self.tok, s["token_ids"].tolist()), int(char)))
        return torch.tensor(first, dtype=torch.long)

    def hidden_states(self, groups: list, completions: list[list[int]], T: int) -> tuple[torch.Tensor, float]:
        """[N, T, k] projected hidden states: the actor's where it sent them, else computed
        here (learner/credit/hidden.py); and the share of rows that came from actors."""
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
        """The teacher pass's CreditBatch fields for every sample (contexts picked here)."""
        contexts, wrong, prompts = [], [], []
        for g in groups:
            texts = [s["text"] for s in g.samples]
            contexts += pick_contexts(texts, g.rewards, g.prompt_id, self.bank, self.rng,
                                      allow_identical=self.cfg.allow_identical_context)
            if self.spec.needs_wrong_context:
                wrong += pick_wrong_contexts(texts, g.rewards, self.rng)
            prompts += [g.prompt] * len(texts)
        out = teacher_scores(self.model, self.tok, prompts, completions, contexts,
                             wrong_contexts=wrong or None, template=self.cfg.template, encode=self.encode,
                             micro_batch=self.cfg.teacher_micro_batch,
                             temperature=self.temperature, top_p=self.top_p)
        out = {k: v.cpu() for k, v in out.items()}  # credit runs on CPU tensors (the trainer moves w)
        fields = {"teacher_kl": out["kl"][:, :T], "teacher_logq": out["logq"][:, :T],
                  "plain_logp": out["logp_plain"][:, :T], "has_teacher": out["has_teacher"]}
        if wrong:
            fields.update(teacher_kl_wrong=out["kl_wrong"][:, :T], has_wrong_teacher=out["has_wrong_teacher"])
        return fields

    # --- after the weights -----------------------------------------------------------
    def diagnostics(self, groups: list, w: torch.Tensor, mask: torch.Tensor, first: torch.Tensor,
                    active: torch.Tensor | None = None) -> dict:
        """First-error mass / AUROC where the verifier names the first wrong character
        (rows outside `active` [N] bool are left out)."""
        counted = first if active is None else torch.where(active, first, torch.full_like(first, -1))
        self.last = (groups, w, counted.tolist())  # for credit.html
        if not (counted >= 0).any():
            return {}
        return credit_diagnostics(w, mask, counted)

    def write_html(self, path, title: str) -> None:
        """credit.html of the last batch (see learner/credit/html.py)."""
        groups, w, first = self.last
        pieces = [token_pieces(self.tok, s["token_ids"].tolist()) for g in groups for s in g.samples]
        rewards = [r for g in groups for r in g.rewards]
        prompts = [g.prompt for g in groups for _ in g.samples]
        write_credit_html(path, title, pieces, w, rewards, first, prompts)

    def bank_solutions(self, groups: list) -> None:
        for g in groups:
            for s, r in zip(g.samples, g.rewards):
                if r >= CORRECT:
                    self.bank.add(g.prompt_id, s["text"])

    # --- checkpoint ------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-able: λ schedule, solution bank, credit RNG (random.Random.getstate)."""
        version, internal, gauss = self.rng.getstate()
        return {"method": self.cfg.method, "schedule": self.schedule.state_dict(), "bank": self.bank.to_dict(),
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.cfg.method:
            raise ValueError(f"checkpoint credit state is for method {state['method']!r}, config says {self.cfg.method!r}")
        self.schedule.load_state_dict(state["schedule"])
        self.bank = SolutionBank.from_dict(state["bank"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
