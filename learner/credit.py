"""Per-token credit weights (DESIGN §6): one pure function per variant, one signature.

What it does:
  * `CreditBatch` holds everything any variant may read for a batch of B completions
    (completion tensors [B, T], left-aligned, mask 1 where valid).
  * Every variant is `variant(batch: CreditBatch, *, lam: float) -> Tensor[B, T]` and
    returns weights w >= 0 with mean_t w = 1 over the valid tokens of every non-empty
    sequence and w = 0 on padding, so `Â_it = A_i w_it` keeps each sequence's advantage
    mass (Σ_t Â_it = A_i Σ_t m_it) and, because w >= 0, its sign.
  * Variants: `uniform` (GRPO), `sc_kl`, `sc_prefix`, `sc_unshared`, `sc_pos`, `sc_contrast`,
    `sc_signed`, `entropy`, `hidden`, `shuffled`; `REGISTRY` maps config names to them.
    `score_weights` is DESIGN §6 steps 4–5 shared by all score-based variants;
    `first_divergence` is the cut point of `sc_prefix`.
  * `token_advantages` forms Â; `check_weights` is the cheap guard on the contract.

Rows that get w = m (uniform) in every score-based variant: A_i = 0, no valid token, no
signal for that row (`has_teacher` False; for `sc_contrast` also `has_wrong_teacher`
False), or a score whose sequence mean is below MIN_MEAN_SCORE.

What it does NOT do: run the teacher pass (`learner/teacher.py` fills `teacher_kl`,
`teacher_logq`, `plain_logp`), pick reference contexts (`learner/solution_bank.py`),
schedule λ (`learner/credit_schedule.py`), or compute the loss. A variant whose required
field is None raises ValueError (a wiring bug), except `sc_contrast`, for which a missing
`teacher_kl_wrong` means "no row has a wrong-sibling context" (w = m on every row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

WEIGHT_MEAN_TOL = 1e-4  # |mean_t w - 1| allowed per sequence by check_weights
U_MAX = 4.0  # cap of u_t = s_t / mean_t s before renormalising (DESIGN §6 step 4)
MIN_MEAN_SCORE = 1e-4  # mean_t s below this: the score carries no signal, w ≡ 1 (step 5)
SIGNED_CLIP = (0.8, 1.2)  # sc_signed (RLSD) clip of exp(sign(A)(log q - log p))
PREFIX_Q_THRESHOLD = 0.1  # sc_prefix: q_t(y_t) below this marks a divergence
COS_EPS = 1e-8  # hidden: |μ+ - μ-| below this (no direction), and cosine denominators


@dataclass(frozen=True)
class CreditBatch:
    """Inputs of a credit variant; completion tensors are [B, T], left-aligned.

    token_ids         [B, T] long   completion token ids (padding arbitrary)
    mask              [B, T] float  1 on valid completion tokens, 0 on padding
    adv               [B]    float  sequence advantages A_i
    group_index       [B]    long   which group (prompt) each sample belongs to
    entropy           [B, T] float  behaviour entropy summaries from the actor, or None
    hidden            [B, T, k]     projected hidden-state summaries from the actor, or None
    teacher_kl        [B, T] float  s_t = KL(p_t || q_t) from the teacher pass, or None
    teacher_logq      [B, T] float  log q_t(y_t) (reference in context), or None
    plain_logp        [B, T] float  log p_t(y_t) (plain context, same pass), or None
    has_teacher       [B]    bool   row has a correct-reference teacher pass; None = every
                                    row (when teacher_kl is given)
    teacher_kl_wrong  [B, T] float  KL(p_t || q_t^wrong), a wrong sibling in context, or None
    has_wrong_teacher [B]    bool   row has a wrong-sibling pass; None = every row when
                                    teacher_kl_wrong is given, else no row
    shuffle_seed      int           seed of `shuffled`'s permutation (vary it per step)
    """

    token_ids: Tensor
    mask: Tensor
    adv: Tensor
    group_index: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None
    teacher_kl: Tensor | None = None
    teacher_logq: Tensor | None = None
    plain_logp: Tensor | None = None
    has_teacher: Tensor | None = None
    teacher_kl_wrong: Tensor | None = None
    has_wrong_teacher: Tensor | None = None
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        if self.mask.dim() != 2 or tuple(self.token_ids.shape) != tuple(self.mask.shape):
            raise ValueError(
                f"token_ids and mask must both be [B, T]; got "
                f"{tuple(self.token_ids.shape)} and {tuple(self.mask.shape)}"
            )
        b, t = self.mask.shape
        for name in ("adv", "group_index", "has_teacher", "has_wrong_teacher"):
            x = getattr(self, name)
            if x is not None and tuple(x.shape) != (b,):
                raise ValueError(f"{name} must be [B] = ({b},); got {tuple(x.shape)}")
        for name in ("has_teacher", "has_wrong_teacher"):
            x = getattr(self, name)
            if x is not None and x.dtype != torch.bool:
                raise ValueError(f"{name} must be a bool tensor; got {x.dtype}")
        for name in ("entropy", "teacher_kl", "teacher_logq", "plain_logp", "teacher_kl_wrong"):
            x = getattr(self, name)
            if x is not None and tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must be [B, T] = ({b}, {t}); got {tuple(x.shape)}")
        if self.hidden is not None and (self.hidden.dim() != 3 or tuple(self.hidden.shape[:2]) != (b, t)):
            raise ValueError(f"hidden must be [B, T, k] with B, T = {b}, {t}; got {tuple(self.hidden.shape)}")


CreditFn = Callable[..., Tensor]  # (batch: CreditBatch, *, lam: float) -> w [B, T]


def _float_mask(mask: Tensor) -> Tensor:
    return mask if mask.is_floating_point() else mask.float()


def _check_lam(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:  # λ > 1 could make w = (1 - λ) + λ u negative
        raise ValueError(f"lam must lie in [0, 1]; got {lam}")


def _need(batch: CreditBatch, name: str, variant: str) -> Tensor:
    x = getattr(batch, name)
    if x is None:
        raise ValueError(f"credit variant {variant!r} needs CreditBatch.{name}, which is None")
    return x


def _has_teacher(batch: CreditBatch) -> Tensor:  # [B] bool
    if batch.has_teacher is not None:
        return batch.has_teacher.to(batch.mask.device)
    return torch.ones(batch.mask.shape[0], dtype=torch.bool, device=batch.mask.device)


def uniform(batch: CreditBatch, *, lam: float = 0.0) -> Tensor:
    """GRPO credit: w_it = m_it (every valid token gets the sequence advantage).

    `lam` is accepted for the shared signature and ignored. Returns a new [B, T]
    tensor with the mask's float dtype (a bool/int mask gives float32).
    """
    return _float_mask(batch.mask).clone()


def score_weights(s: Tensor, mask: Tensor, lam: float, active: Tensor) -> Tensor:
    """DESIGN §6 steps 4–5 on scores s [B, T] >= 0; returns w [B, T] in the mask's float dtype.

    Per row i with valid tokens m (n_i = Σ_t m_t), in float64:
        s̄   = Σ_t m s_t / n_i                       (negative s is clamped to 0 first)
        u_t = min(s_t / s̄, U_MAX)                    (cap)
        u_t ← u_t / (Σ_t m u_t / n_i)                (renormalise: mean_t u = 1)
        w_t = ((1 - λ) + λ u_t) m_t                  (mean_t w = 1 exactly)
    Rows with active_i False, n_i = 0 or s̄ < MIN_MEAN_SCORE get w = m.
    Note: the cap applies once, before renormalising, as DESIGN §6 states; a score that
    lives on few tokens can therefore still end above U_MAX (one-hot s on n tokens gives
    u = n at the spike, because renormalising undoes the cap).
    """
    _check_lam(lam)
    m = _float_mask(mask)
    md = (m > 0).double()  # [B, T]
    n = md.sum(dim=1)  # [B]
    sd = s.detach().double().clamp(min=0.0) * md  # [B, T]
    mean_s = sd.sum(dim=1) / n.clamp(min=1)  # [B]
    ok = active.to(m.device) & (n > 0) & (mean_s >= MIN_MEAN_SCORE)  # [B]
    u = (sd / mean_s.clamp(min=MIN_MEAN_SCORE)[:, None]).clamp(max=U_MAX) * md  # [B, T]
    mean_u = u.sum(dim=1) / n.clamp(min=1)  # [B]; > 0 wherever ok
    u = u / mean_u.clamp(min=MIN_MEAN_SCORE)[:, None]
    w = ((1.0 - lam) + lam * u) * md  # [B, T]
    return torch.where(ok[:, None], w, md).to(m.dtype)


def sc_kl(batch: CreditBatch, *, lam: float) -> Tensor:
    """SC-GRPO credit (DESIGN §6 steps 1–5; arXiv 2606.18810, "Learning from Own Solutions").

    s_t = KL(p_t || q_t) = `teacher_kl`, p_t = π(·|x, y_<t), q_t = π(·|ctx(x, c), y_<t)
    with c a verified solution of the same prompt (never y itself); then `score_weights`:
    u_t = s_t / mean_t s, capped at U_MAX, renormalised to mean 1 over the row's valid
    tokens; w_t = (1 - λ) + λ u_t. Rows with A = 0 or has_teacher False get w = m.
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
    """ℓ [B] long: longest token prefix row i shares with an opposite-sign row of its group (else 0)."""
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

    ℓ_i = `shared_prefix_len`. On t < ℓ_i, w = 1: an opposite-sign sibling made the same
    token in the same context, so uniform credit's pushes on it cancel within the group;
    a per-row mean-1 reweighting would leave a residual push no outcome explains. On
    t >= ℓ_i, `score_weights` of s = `teacher_kl` with the suffix's own mean, so mean_t w = 1.
    Rows with A = 0, no teacher or an empty suffix get w = m. DESIGN §6: "weights that
    only redistribute among tokens the siblings do not share".
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
    (u = s / mean s, cap U_MAX, mean 1; w = (1 - λ) + λ u). Rows without both passes
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

    Then `score_weights`: u = H / mean_t H, cap U_MAX, mean 1; w = (1 - λ) + λ u.
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
    cap U_MAX, mean 1; w = (1 - λ) + λ u). Groups without both signs, or with
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


def token_advantages(adv: Tensor, w: Tensor) -> Tensor:
    """Â_it = A_i * w_it.  adv: [B], w: [B, T] -> [B, T]."""
    if adv.dim() != 1 or w.dim() != 2 or adv.shape[0] != w.shape[0]:
        raise ValueError(f"need adv [B] and w [B, T]; got {tuple(adv.shape)} and {tuple(w.shape)}")
    return adv[:, None].to(w.dtype) * w


def check_weights(w: Tensor, mask: Tensor, *, tol: float = WEIGHT_MEAN_TOL) -> None:
    """Raise ValueError unless w satisfies the credit contract; returns None if it does.

    Contract: same shape [B, T]; finite; w >= 0; w = 0 where mask = 0; and for every
    sequence with at least one valid token |Σ_t m w / Σ_t m - 1| <= tol.
    The message names the first offending sequence index.
    """
    if tuple(w.shape) != tuple(mask.shape) or w.dim() != 2:
        raise ValueError(f"w and mask must both be [B, T]; got {tuple(w.shape)} and {tuple(mask.shape)}")
    valid = mask > 0  # [B, T]
    wd = w.detach().double()  # [B, T]

    def first(bad_rows: Tensor) -> int:
        return int(torch.nonzero(bad_rows)[0, 0])

    bad = ~torch.isfinite(wd).all(dim=1)
    if bad.any():
        raise ValueError(f"credit weights of sequence {first(bad)} are not finite")
    bad = (wd < 0).any(dim=1)
    if bad.any():
        i = first(bad)
        raise ValueError(f"credit weights of sequence {i} are negative (min {float(wd[i].min()):.4g})")
    bad = ((wd != 0) & ~valid).any(dim=1)
    if bad.any():
        raise ValueError(f"credit weights of sequence {first(bad)} are nonzero on padding")
    n = valid.sum(dim=1)  # [B]
    mean = (wd * valid).sum(dim=1) / n.clamp(min=1)  # [B]
    bad = (n > 0) & ((mean - 1.0).abs() > tol)
    if bad.any():
        i = first(bad)
        raise ValueError(
            f"credit weights of sequence {i} have mean {float(mean[i]):.6g} over its "
            f"{int(n[i])} valid tokens; must be 1 (tol {tol})"
        )


REGISTRY: dict[str, CreditFn] = {
    "uniform": uniform,
    "sc_kl": sc_kl,
    "sc_prefix": sc_prefix,
    "sc_unshared": sc_unshared,
    "sc_pos": sc_pos,
    "sc_contrast": sc_contrast,
    "sc_signed": sc_signed,
    "entropy": entropy,
    "hidden": hidden,
    "shuffled": shuffled,
}
