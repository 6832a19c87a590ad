"""Per-token credit weights (DESIGN §6): one pure function per variant, one signature.

What it does:
  * `CreditBatch` holds everything any variant may read for a batch of B completions
    (completion tensors [B, T], left-aligned, mask 1 where valid).
  * Every variant is `variant(batch: CreditBatch, *, lam: float = ...) -> Tensor[B, T]`
    and returns weights w >= 0 with mean_t w = 1 over the valid tokens of every non-empty
    sequence and w = 0 on padding, so `Â_it = A_i w_it` keeps each sequence's advantage
    mass (Σ_t Â_it = A_i Σ_t m_it) and sign.
  * `uniform` is GRPO (w = mask). `token_advantages` forms Â; `check_weights` is the
    cheap guard on the contract above. `REGISTRY` maps config names to variants.

What it does NOT do: run the teacher pass (the caller fills `teacher_kl`, `teacher_logq`,
`plain_logp`), pick reference contexts, schedule λ, or compute the loss.
Only `uniform` exists for now; the SCCA variants (`sc_kl`, `sc_prefix`, `sc_pos`,
`sc_contrast`, `sc_signed`, `entropy`, `hidden`, `shuffled`) go in this file later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

WEIGHT_MEAN_TOL = 1e-4  # |mean_t w - 1| allowed per sequence by check_weights


@dataclass(frozen=True)
class CreditBatch:
    """Inputs of a credit variant; completion tensors are [B, T], left-aligned.

    token_ids    [B, T] long   completion token ids (padding arbitrary)
    mask         [B, T] float  1 on valid completion tokens, 0 on padding
    adv          [B]    float  sequence advantages A_i
    group_index  [B]    long   which group (prompt) each sample belongs to
    entropy      [B, T] float  behaviour entropy summaries from the actor, or None
    hidden       [B, T, k]     projected hidden-state summaries from the actor, or None
    teacher_kl   [B, T] float  s_t = KL(p_t || q_t) from the teacher pass, or None
    teacher_logq [B, T] float  log q_t(y_t) (reference in context), or None
    plain_logp   [B, T] float  log p_t(y_t) (plain context, same pass), or None
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

    def __post_init__(self) -> None:
        if self.mask.dim() != 2 or tuple(self.token_ids.shape) != tuple(self.mask.shape):
            raise ValueError(
                f"token_ids and mask must both be [B, T]; got "
                f"{tuple(self.token_ids.shape)} and {tuple(self.mask.shape)}"
            )
        b, t = self.mask.shape
        for name in ("adv", "group_index"):
            if tuple(getattr(self, name).shape) != (b,):
                raise ValueError(f"{name} must be [B] = ({b},); got {tuple(getattr(self, name).shape)}")
        for name in ("entropy", "teacher_kl", "teacher_logq", "plain_logp"):
            x = getattr(self, name)
            if x is not None and tuple(x.shape) != (b, t):
                raise ValueError(f"{name} must be [B, T] = ({b}, {t}); got {tuple(x.shape)}")
        if self.hidden is not None and (self.hidden.dim() != 3 or tuple(self.hidden.shape[:2]) != (b, t)):
            raise ValueError(f"hidden must be [B, T, k] with B, T = {b}, {t}; got {tuple(self.hidden.shape)}")


CreditFn = Callable[..., Tensor]  # (batch: CreditBatch, *, lam: float) -> w [B, T]


def uniform(batch: CreditBatch, *, lam: float = 0.0) -> Tensor:
    """GRPO credit: w_it = m_it (every valid token gets the sequence advantage).

    `lam` is accepted for the shared signature and ignored. Returns a new [B, T]
    tensor with the mask's float dtype (a bool/int mask gives float32).
    """
    m = batch.mask
    return (m if m.is_floating_point() else m.float()).clone()


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


REGISTRY: dict[str, CreditFn] = {"uniform": uniform}
