"""Mean-one credit variants (DESIGN §6): one pure function per variant, one signature.

What it does:
  * Every variant is `variant(batch: CreditBatch, *, lam: float) -> Tensor[B, T]` and
    returns weights w >= 0 with mean_t w = 1 over the valid tokens of every non-empty
    sequence and w = 0 on padding, so `Â_it = A_i w_it` keeps each sequence's advantage
    mass (Σ_t Â_it = A_i Σ_t m_it) and, because w >= 0, its sign: these variants only
    move credit between the tokens of one answer, never between answers.
  * Variants: `uniform` (GRPO), `sc_kl`, `sc_prefix`, `sc_unshared`, `sc_pos`,
    `sc_contrast`, `sc_signed`, `entropy`, `hidden`, `shuffled`. Which inputs each needs,
    its λ schedule and gate are in the one registry, `protocol/credit_methods.py`.
    `first_divergence` (the self-teacher's cut point, also used by `cuts.sc_cut`) and
    `shared_prefix_len` are shared helpers; `normalise.score_weights` is steps 4–5.

Rows that get w = m (uniform) in every score-based variant: A_i = 0, no valid token, no
signal for that row (`has_teacher` False; for `sc_contrast` also `has_wrong_teacher`
False), or a score whose sequence mean is below MIN_MEAN_SCORE.

What it does NOT do: run the teacher pass (`teacher.py` fills `teacher_kl`,
`teacher_logq`, `plain_logp`), pick reference contexts (`contexts.py`), schedule λ
(`schedule.py`), move mass between sequences (`cuts.py`), or compute the loss. A variant
whose required field is None raises ValueError (a wiring bug), except `sc_contrast`, for
which a missing `teacher_kl_wrong` means "no row has a wrong-sibling context" (w = m).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from learner.credit.batch import CreditBatch, float_mask as _float_mask, has_teacher as _has_teacher, need as _need
from learner.credit.normalise import score_weights

SIGNED_CLIP = (0.8, 1.2)  # sc_signed (RLSD) clip of exp(sign(A)(log q - log p))
PREFIX_Q_THRESHOLD = 0.1  # first_divergence: q_t(y_t) below this marks a divergence
COS_EPS = 1e-8  # hidden: |μ+ - μ-| below this (no direction), and cosine denominators


def uniform(batch: CreditBatch, *, lam: float = 0.0) -> Tensor:
    """GRPO credit: w_it = m_it (every valid token gets the sequence advantage).

    `lam` is accepted for the shared signature and ignored. Returns a new [B, T]
    tensor with the mask's float dtype (a bool/int mask gives float32).
    """
    return _float_mask(batch.mask).clone()


def sc_kl(batch: CreditBatch, *, lam: float) -> Tensor:
    """SC-GRPO credit (DESIGN §6 steps 1–5; arXiv 2606.18810, "Learning from Own Solutions").

    s_t = KL(p_t || q_t) = `teacher_kl`, p_t = π(·|x, y_<t), q_t = π(·|ctx(x, c), y_<t)
    with c a verified solution of the same prompt (never y itself); then `score_weights`:
    u = water-filled s / mean_t s (mean 1 over the row's valid tokens, u <= U_MAX);
    w_t = (1 - λ) + λ u_t. Rows with A = 0 or has_teacher False get w = m.
    """
    s = _need(batch, "teacher_kl", "sc_kl")
    return score_weights(s, batch.mask, lam, _has_teacher(batch) & (batch.adv != 0))


def first_divergence(kl: Tensor, mask: Tensor, logq: Tensor | None = None,
                     q_threshold: float = PREFIX_Q_THRESHOLD) -> Tensor:
    """Index [B] (long) of each row's first divergence from the self-teacher.

    d_i = min(first t with s_t = max_t s,  first t with q_t(y_t) < q_threshold)
    over valid tokens (the second term only when logq is given). Rows with no valid
    token get 0.
    """
    valid = _float_mask(mask) > 0  # [B, T]
    if valid.shape[1] == 0:
        return torch.zeros(valid.shape[0], dtype=torch.long, device=valid.device)
    s = kl.detach().double().masked_fill(~valid, -math.inf)  # [B, T]
    d = s.argmax(dim=1)  # torch returns the first maximal index
    if logq is not None:
        low = valid & (logq.detach().double() < math.log(q_threshold))  # [B, T]
        d_low = low.int().argmax(dim=1)  # first True
        d = torch.where(low.any(dim=1), torch.minimum(d, d_low), d)
    return torch.where(valid.any(dim=1), d, torch.zeros_like(d))


def sc_prefix(batch: CreditBatch, *, lam: float) -> Tensor:
    """`sc_kl` on the prefix up to and including the first divergence, w = 1 after it.

    d = `first_divergence(teacher_kl, mask, teacher_logq, PREFIX_Q_THRESHOLD)`; the prefix
    P = {t <= d} is weighted by `score_weights` with its own mean (mean_{t∈P} w = 1) and
    every token after d gets w = 1, so mean_t w = 1 over the whole row. A divergence at
    t = 0 leaves a one-token prefix, hence w = m. Motivation: DESIGN §6 measured 64% of
    a wrong answer's KL mass after its first error (faithful copies of its own mistake).
    """
    s = _need(batch, "teacher_kl", "sc_prefix")
    m = _float_mask(batch.mask)
    d = first_divergence(s, m, batch.teacher_logq)  # [B]
    cols = torch.arange(m.shape[1], device=m.device)
    in_prefix = cols[None, :] <= d[:, None]  # [B, T]
    w_pre = score_weights(s, m * in_prefix, lam, _has_teacher(batch) & (batch.adv != 0))
    return torch.where(in_prefix, w_pre, m)


def shared_prefix_len(token_ids: Tensor, mask: Tensor, adv: Tensor, group_index: Tensor) -> Tensor:
    """ℓ [B] long: the longest prefix (in tokens) row i shares with a row of its group whose
    advantage has the opposite sign (0 when A_i = 0 or there is no such row)."""
    valid = _float_mask(mask) > 0  # [B, T]
    out = torch.zeros(mask.shape[0], dtype=torch.long, device=mask.device)
    for i in torch.nonzero(adv != 0).squeeze(1).tolist():
        opp = (group_index == group_index[i]) & (torch.sign(adv) == -torch.sign(adv[i]))  # [B]
        if not opp.any():
            continue
        same = (token_ids[opp] == token_ids[i][None, :]) & valid[opp] & valid[i][None, :]  # [b, T]
        out[i] = same.long().cumprod(dim=1).sum(dim=1).max()
    return out


def sc_unshared(batch: CreditBatch, *, lam: float) -> Tensor:
    """`sc_kl` on the tokens no opposite-sign sibling shares; w = 1 on the shared prefix.

    ℓ_i = `shared_prefix_len` (longest common token prefix of row i with a sibling whose
    advantage has the other sign). Why w = 1 there: on a token t < ℓ_i the sibling j
    produced the same token y_t in the same context (x, y_<t), so the group's uniform
    policy gradient on it is
        Σ_{j shares y_≤t} A_j ∇log π(y_t | x, y_<t) = (Σ_{j shares y_≤t} A_j) ∇log π(y_t | x, y_<t),
    and the opposite-sign advantages cancel (fully when the sharing rows' A sum to 0,
    e.g. one right and one wrong). That cancellation is what makes uniform GRPO's net
    push land at the divergence without any credit model. A per-row mean-1 reweighting
    breaks it: row i's weight w_it and row j's w_jt on the same shared token differ, so
    (A_i w_it + A_j w_jt) ∇log π ≠ 0 leaves a residual push on a token whose outcome both
    rows share, which no outcome explains. Keeping w = 1 on t < ℓ_i keeps the
    cancellation exact (the sibling's own ℓ_j is at least as long, so it has w = 1 there too). On t >= ℓ_i, `score_weights` of s = `teacher_kl` with the
    suffix's own mean (mean_{t>=ℓ} w = 1), so mean_t w = 1 over the row. Rows with A = 0,
    no teacher, or an empty suffix get w = m. DESIGN §6: "weights that only redistribute
    among tokens the siblings do not share".
    """
    s = _need(batch, "teacher_kl", "sc_unshared")
    m = _float_mask(batch.mask)
    ell = shared_prefix_len(batch.token_ids, m, batch.adv, batch.group_index)  # [B]
    own = torch.arange(m.shape[1], device=m.device)[None, :] >= ell[:, None]  # [B, T]
    w_own = score_weights(s, m * own, lam, _has_teacher(batch) & (batch.adv != 0))
    return torch.where(own, w_own, m)


def sc_pos(batch: CreditBatch, *, lam: float) -> Tensor:
    """`sc_kl` on samples with A > 0 only; w = m on negatives (and A = 0).

    Same equation and normaliser as `sc_kl`: w_t = (1 - λ) + λ u_t, mean_t w = 1.
    """
    s = _need(batch, "teacher_kl", "sc_pos")
    return score_weights(s, batch.mask, lam, _has_teacher(batch) & (batch.adv > 0))


def sc_contrast(batch: CreditBatch, *, lam: float) -> Tensor:
    """RLCSD-style contrastive self-teacher: s_t = max(0, KL(p_t||q_t^correct) - KL(p_t||q_t^wrong)).

    q^correct has a correct solution in context (`teacher_kl`), q^wrong a wrong sibling
    (`teacher_kl_wrong`), so what any reference changes cancels out; then `score_weights`
    (u = s / mean s, water-filled to mean 1 with u <= U_MAX; w = (1 - λ) + λ u). Rows without both passes
    (has_teacher / has_wrong_teacher False, or teacher_kl_wrong None) get w = m.
    """
    s = _need(batch, "teacher_kl", "sc_contrast")
    active = _has_teacher(batch) & (batch.adv != 0)
    if batch.teacher_kl_wrong is None:
        return score_weights(torch.zeros_like(s), batch.mask, lam, torch.zeros_like(active))
    if batch.has_wrong_teacher is not None:
        active = active & batch.has_wrong_teacher.to(active.device)
    return score_weights((s - batch.teacher_kl_wrong).clamp(min=0.0), batch.mask, lam, active)


def sc_signed(batch: CreditBatch, *, lam: float) -> Tensor:
    """RLSD-style signed self-distillation weight, renormalised to mean 1.

    r_t = clip(exp(sign(A) (log q_t(y_t) - log p_t(y_t))), 0.8, 1.2)   (SIGNED_CLIP)
    u_t = r_t / mean_t r   (the cap U_MAX never binds: u <= 1.2 / 0.8 = 1.5)
    w_t = (1 - λ) + λ u_t  (λ = 1: the pure normalised RLSD ratio)
    A > 0 up-weights tokens the conditioned teacher likes more than the plain policy,
    A < 0 tokens it likes less. Needs `teacher_logq` and `plain_logp`; rows with A = 0 or
    has_teacher False get w = m.
    """
    logq = _need(batch, "teacher_logq", "sc_signed").double()
    logp = _need(batch, "plain_logp", "sc_signed").double()
    sign = torch.sign(batch.adv.double())[:, None]  # [B, 1]
    r = torch.exp((sign * (logq - logp)).clamp(-30.0, 30.0)).clamp(*SIGNED_CLIP)  # [B, T]
    return score_weights(r, batch.mask, lam, _has_teacher(batch) & (batch.adv != 0))


def entropy(batch: CreditBatch, *, lam: float) -> Tensor:
    """Entropy credit, GTPO-style (Tan et al. 2025, "GTPO and GRPO-S"): s_t = H(μ_t) = `entropy`.

    Then `score_weights`: u = H / mean_t H, water-filled to mean 1 with u <= U_MAX; w = (1 - λ) + λ u.
    Unlike GTPO (which uses 1/H on failed samples) high-entropy tokens get more weight
    on both signs: DESIGN §6 measured H as the best first-error detector (AUROC 0.94).
    Needs no teacher pass; rows with A = 0 get w = m.
    """
    s = _need(batch, "entropy", "entropy")
    return score_weights(s, batch.mask, lam, batch.adv != 0)


def hidden(batch: CreditBatch, *, lam: float) -> Tensor:
    """Hidden-state credit from the actors' projected states h_t [k] (DESIGN §6 `hidden`).

    Per group g: μ+ (μ-) = mean of h_t over all valid tokens of g's samples with A > 0
    (A < 0); s_t = |cos(h_t - (μ+ + μ-)/2, μ+ - μ-)|; then `score_weights` (u = s / mean s,
    water-filled to mean 1 with u <= U_MAX; w = (1 - λ) + λ u). Groups without both signs, or with
    |μ+ - μ-| < COS_EPS, and rows with A = 0 get w = m. μ± use only the rows of the
    group present in this batch, so pass whole groups.
    """
    h = _need(batch, "hidden", "hidden").detach().float()  # [B, T, k]
    valid = _float_mask(batch.mask) > 0  # [B, T]
    s = torch.zeros(valid.shape, dtype=torch.float32, device=h.device)  # [B, T]
    active = torch.zeros(valid.shape[0], dtype=torch.bool, device=h.device)  # [B]
    for g in torch.unique(batch.group_index).tolist():
        rows = batch.group_index == g  # [B]
        pos_tok = valid & (rows & (batch.adv > 0))[:, None]  # [B, T]
        neg_tok = valid & (rows & (batch.adv < 0))[:, None]
        if not pos_tok.any() or not neg_tok.any():
            continue
        mu_p, mu_n = h[pos_tok].mean(dim=0), h[neg_tok].mean(dim=0)  # [k]
        d = mu_p - mu_n  # [k]
        if float(d.norm()) < COS_EPS:
            continue
        x = h[rows] - (mu_p + mu_n) / 2  # [b, T, k]
        cos = (x @ d) / (x.norm(dim=-1) * d.norm()).clamp(min=COS_EPS)  # [b, T]
        s[rows] = cos.abs()
        active |= rows & (batch.adv != 0)
    return score_weights(s, batch.mask, lam, active)


def shuffled(batch: CreditBatch, *, lam: float) -> Tensor:
    """Control: `sc_kl` weights permuted among each row's valid tokens.

    Same multiset of weights per row as `sc_kl` (so mean_t w = 1 and the spread are kept)
    but placed at random: catches "any reweighting helps". The permutation comes from a
    torch.Generator seeded with `batch.shuffle_seed` (deterministic; vary it per step).
    """
    w = sc_kl(batch, lam=lam).clone()
    valid = _float_mask(batch.mask) > 0
    gen = torch.Generator().manual_seed(int(batch.shuffle_seed))
    for i in range(w.shape[0]):
        idx = torch.nonzero(valid[i]).squeeze(1)  # [n_i]
        perm = torch.randperm(idx.numel(), generator=gen).to(idx.device)
        w[i, idx] = w[i, idx[perm]]
    return w
