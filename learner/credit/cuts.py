"""Round-3 credit arms (issue 10, DESIGN §6 "Round 3"): weights that move advantage mass.

Unlike `variants.py` these do not keep mean_t w = 1: they decide how much of a wrong
answer is blamed at all. Every arm reweights wrong samples only (A_i < 0); correct
samples, A = 0 rows and rows the arm has no information for keep w = m (GRPO). Same
signature as every variant, `arm(batch, *, lam) -> w [B, T]`, with
    w_it = ((1 - λ) + λ c_it) m_it   on the rows the arm reweights,
where c is the arm's raw weight; the registry gives O, T, R and K λ = 1 from step 0 and
K-RLSD the decaying schedule.

  * `verifier` (O, oracle / verifier credit): c_t = 1 for t <= e_i, 0 after, with e_i the
    token holding the verifier's first wrong character (`first_wrong`, mapped from the
    character index with the tokenizer's offsets). The ceiling of error localisation:
    the tokens after the first error (often faithful copies of a wrong intermediate
    value) get no push at all. Rows whose error position is unknown (-1, or past the
    row) keep w = m.
  * `sc_cut` (T): the same cut at the self-teacher's first divergence
    d_i = `variants.first_divergence(teacher_kl, mask, teacher_logq)`, on rows with a
    teacher context.
  * `sc_cut_shuffled` (R): T's cut points permuted at random among the batch's cut rows
    (d_i ← d_π(i), clamped to the row's last token): about the same negative mass as T,
    no localisation. The control for "blaming less of a wrong answer helps anyway".
  * `sc_grpo` (K, SC-GRPO as its abstract states it): c_t = min(s_t / s̄, K_CAP) with
    s_t = KL(p_t || q_t) and s̄ the mean of s over all valid tokens of the rows K
    reweights in this batch. No per-sequence renormalisation, so a wrong answer far from
    the verified solution (large s everywhere) weighs more than one close to it.
    Reconstruction choices (the abstract does not fix them): only wrong samples are
    reweighted (in `arith` a correct sample's reference is the same string, s ≈ 0, and
    c ≈ 0 would switch its positive push off); s̄ is taken over those rows' tokens, so
    the batch mean of c is 1 before the cap; K_CAP = U_MAX = 4.

What it does NOT do: compute the teacher pass or the character-to-token map
(`teacher.py`, `diagnostics.py`), or renormalise anything.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner.credit.batch import CreditBatch, check_lam, float_mask, has_teacher, need
from learner.credit.normalise import MIN_MEAN_SCORE, U_MAX
from learner.credit.variants import first_divergence

K_CAP = U_MAX  # cap of sc_grpo's c_t = s_t / s̄


def _cut(mask: Tensor, rows: Tensor, d: Tensor, lam: float) -> Tensor:
    """w = ((1 - λ) + λ [t <= d_i]) m on `rows` [B] bool, w = m elsewhere. d [B] long."""
    check_lam(lam)
    m = float_mask(mask)
    cols = torch.arange(m.shape[1], device=m.device)[None, :]
    keep = (cols <= d[:, None]).to(m.dtype)  # [B, T]
    w = ((1.0 - lam) + lam * keep) * m
    return torch.where(rows[:, None], w, m)


def _n_valid(batch: CreditBatch) -> Tensor:  # [B] long
    return (float_mask(batch.mask) > 0).sum(dim=1)


def verifier(batch: CreditBatch, *, lam: float) -> Tensor:
    """O: wrong samples w = 1 up to and including the verifier's first wrong token, 0 after (module doc)."""
    e = need(batch, "first_wrong", "verifier").long().to(batch.mask.device)  # [B]
    rows = (batch.adv < 0) & (e >= 0) & (e < _n_valid(batch))
    return _cut(batch.mask, rows, e, lam)


def _teacher_cuts(batch: CreditBatch, variant: str) -> tuple[Tensor, Tensor]:
    """(rows [B] bool, d [B] long): wrong rows with a teacher pass, and their first divergence."""
    s = need(batch, "teacher_kl", variant)
    rows = (batch.adv < 0) & has_teacher(batch) & (_n_valid(batch) > 0)
    return rows, first_divergence(s, batch.mask, batch.teacher_logq)


def sc_cut(batch: CreditBatch, *, lam: float) -> Tensor:
    """T: the verifier's cut placed at the self-teacher's first divergence (module doc)."""
    rows, d = _teacher_cuts(batch, "sc_cut")
    return _cut(batch.mask, rows, d, lam)


def sc_cut_shuffled(batch: CreditBatch, *, lam: float) -> Tensor:
    """R: sc_cut's cut points permuted among the batch's cut rows (torch.Generator seeded
    with `batch.shuffle_seed`), each clamped to its new row's last valid token."""
    rows, d = _teacher_cuts(batch, "sc_cut_shuffled")
    idx = torch.nonzero(rows).squeeze(1)  # [R]
    gen = torch.Generator().manual_seed(int(batch.shuffle_seed))
    perm = torch.randperm(idx.numel(), generator=gen).to(idx.device)
    d = d.clone()
    d[idx] = torch.minimum(d[idx[perm]], _n_valid(batch)[idx] - 1)
    return _cut(batch.mask, rows, d, lam)


def sc_grpo(batch: CreditBatch, *, lam: float) -> Tensor:
    """K: w = (1 - λ) + λ min(s_t / s̄, K_CAP) on wrong rows with a teacher, s̄ over those
    rows' valid tokens (module doc); w = m elsewhere, and everywhere if s̄ < MIN_MEAN_SCORE."""
    check_lam(lam)
    s = need(batch, "teacher_kl", "sc_grpo").detach().double().clamp(min=0.0)  # [B, T]
    m = float_mask(batch.mask)
    rows = (batch.adv < 0) & has_teacher(batch)  # [B]
    sel = (m > 0) & rows[:, None]  # [B, T] tokens K reweights
    n = sel.sum()
    s_bar = float((s * sel).sum() / n) if n > 0 else 0.0
    if s_bar < MIN_MEAN_SCORE:
        return m.clone()
    c = (s / s_bar).clamp(max=K_CAP)  # [B, T]
    w = (((1.0 - lam) + lam * c) * (m > 0)).to(m.dtype)
    return torch.where(rows[:, None], w, m)
