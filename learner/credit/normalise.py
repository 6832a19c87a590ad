"""Scores -> mean-one weights with a cap that holds (DESIGN §6 steps 4–5), shared by every score variant.

What it does:
  * `water_fill(s, valid, cap)`: per row, the u with mean_t u = 1 over the valid tokens,
    u_t <= cap, and u_t = α s_t on every token below the cap (one α per row):
        u_t = min(α s_t, cap),   α chosen so that Σ_t m u_t = n   (n = Σ_t m)
    found by capping the tokens above the cap and rescaling the rest until none exceeds
    it (at most T rounds; α only grows, so a capped token stays capped). Water-filling
    is the fix of the first implementation's "cap, then renormalise", which let weights
    reach cap / mean(u) (up to ~6.7 measured): renormalising undid the cap.
    Infeasible rows (fewer than n / cap tokens with s > 0, e.g. one spike): every
    positive token sits at the cap and the remaining mass n - cap k is spread evenly
    over the k' zero-score tokens (so those get (n - cap k) / k' < cap).
  * `score_weights(s, mask, lam, active)`: DESIGN §6 steps 4–5 on scores s >= 0:
        u = water_fill(s / mean_t s),  w_t = ((1 - λ) + λ u_t) m_t
    so mean_t w = 1 exactly and w <= (1 - λ) + λ U_MAX <= U_MAX. Rows with active False,
    no valid token, or mean_t s < MIN_MEAN_SCORE get w = m (uniform).

What it does NOT do: produce the scores (teacher pass, entropy, hidden states) or decide
which rows are active (the variants do).
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner.credit.batch import check_lam, float_mask

U_MAX = 4.0  # cap of u_t after normalisation (DESIGN §6 step 4); water-filling makes it hold
MIN_MEAN_SCORE = 1e-4  # mean_t s below this: the score carries no signal, w ≡ 1 (step 5)


def water_fill(s: Tensor, valid: Tensor, cap: float = U_MAX) -> Tensor:
    """u [B, T] float64: mean 1 over each row's valid tokens, u <= cap, u ∝ s below the cap.

    s [B, T] >= 0 (float), valid [B, T] bool; rows with no valid token or Σ s = 0 get
    u = 1 on their valid tokens. Needs cap >= 1 (else mean 1 is impossible). 0 on padding.
    """
    if cap < 1.0:
        raise ValueError(f"cap must be >= 1 for a mean-1 weight to exist; got {cap}")
    v = valid.double()  # [B, T]
    sd = s.detach().double().clamp(min=0.0) * v  # [B, T]
    n = v.sum(dim=1)  # [B]
    capped = torch.zeros_like(valid)  # [B, T] bool
    u = v.clone()
    for _ in range(max(1, s.shape[1]) + 1):
        free = valid & ~capped  # [B, T]
        budget = n - cap * capped.sum(dim=1)  # [B] mass left for the free tokens
        s_free = (sd * free).sum(dim=1)  # [B]
        n_free = free.sum(dim=1).clamp(min=1)  # [B]
        alpha = budget / s_free.clamp(min=1e-300)  # [B]
        spread = (budget / n_free)[:, None] * free  # infeasible rows: the rest spread evenly
        scaled = torch.where((s_free > 0)[:, None], alpha[:, None] * sd, spread)  # [B, T]
        u = torch.where(capped, torch.full_like(sd, cap), scaled) * v
        over = free & (u > cap * (1 + 1e-12))
        if not over.any():
            break
        capped |= over
    flat = (sd.sum(dim=1) <= 0) | (n == 0)  # [B]
    return torch.where(flat[:, None], v, u)


def score_weights(s: Tensor, mask: Tensor, lam: float, active: Tensor, cap: float = U_MAX) -> Tensor:
    """DESIGN §6 steps 4–5 (module doc); s [B, T] >= 0 -> w [B, T] in the mask's float dtype.

    Per row i with valid tokens m (n_i = Σ_t m_t), in float64:
        s̄   = Σ_t m s_t / n_i                      (negative s is clamped to 0 first)
        u    = water_fill(s / s̄, cap)               (mean_t u = 1, u <= cap)
        w_t  = ((1 - λ) + λ u_t) m_t                 (mean_t w = 1 exactly, w <= cap)
    Rows with active_i False, n_i = 0 or s̄ < MIN_MEAN_SCORE get w = m.
    """
    check_lam(lam)
    m = float_mask(mask)
    valid = m > 0  # [B, T]
    md = valid.double()
    n = md.sum(dim=1)  # [B]
    sd = s.detach().double().clamp(min=0.0) * md  # [B, T]
    mean_s = sd.sum(dim=1) / n.clamp(min=1)  # [B]
    ok = active.to(m.device) & (n > 0) & (mean_s >= MIN_MEAN_SCORE)  # [B]
    u = water_fill(sd / mean_s.clamp(min=MIN_MEAN_SCORE)[:, None], valid, cap)  # [B, T]
    w = ((1.0 - lam) + lam * u) * md  # [B, T]
    return torch.where(ok[:, None], w, md).to(m.dtype)
