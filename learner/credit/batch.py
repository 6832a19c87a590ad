"""What a credit variant reads (`CreditBatch`) and the contract its weights must meet.

What it does:
  * `CreditBatch` holds everything any variant may read for a batch of B completions
    (completion tensors [B, T], left-aligned, mask 1 where valid), and checks shapes.
  * `check_weights` is the cheap guard every step runs on a variant's output:
        always:         shape [B, T], finite, w >= 0, w = 0 on padding, w <= W_BOUND
        mean_one specs: |Σ_t m w / Σ_t m - 1| <= tol on every non-empty sequence, so
                        Â_it = A_i w_it keeps each sequence's advantage mass
                        (Σ_t Â_it = A_i Σ_t m_it) and, because w >= 0, its sign.
    The round-3 arms (`learner/credit/cuts.py`) are not mean-one by design: they move
    advantage mass between tokens and sequences (a cut sets w = 0 after a point).
  * `token_advantages` forms Â_it = A_i w_it.

What it does NOT do: compute weights (`variants.py`, `cuts.py`) or run the teacher pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

WEIGHT_MEAN_TOL = 1e-4  # |mean_t w - 1| allowed per sequence by check_weights (mean-one variants)
W_BOUND = 4.0 + 1e-6  # no variant may put more than U_MAX (= K_CAP = 4) on one token


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
    first_wrong       [B]    long   token index of the verifier's first wrong character
                                    (-1: correct, or no position named), or None
    shuffle_seed      int           seed of the variant's own randomness (vary it per step)
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
    first_wrong: Tensor | None = None
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        if self.mask.dim() != 2 or tuple(self.token_ids.shape) != tuple(self.mask.shape):
            raise ValueError(
                f"token_ids and mask must both be [B, T]; got "
                f"{tuple(self.token_ids.shape)} and {tuple(self.mask.shape)}"
            )
        b, t = self.mask.shape
        for name in ("adv", "group_index", "has_teacher", "has_wrong_teacher", "first_wrong"):
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


def float_mask(mask: Tensor) -> Tensor:
    return mask if mask.is_floating_point() else mask.float()


def check_lam(lam: float) -> None:
    if not 0.0 <= lam <= 1.0:  # λ > 1 could make w = (1 - λ) + λ u negative
        raise ValueError(f"lam must lie in [0, 1]; got {lam}")


def need(batch: CreditBatch, name: str, variant: str) -> Tensor:
    """batch.<name>, or ValueError naming the variant (a wiring bug, not bad data)."""
    x = getattr(batch, name)
    if x is None:
        raise ValueError(f"credit variant {variant!r} needs CreditBatch.{name}, which is None")
    return x


def has_teacher(batch: CreditBatch) -> Tensor:  # [B] bool
    if batch.has_teacher is not None:
        return batch.has_teacher.to(batch.mask.device)
    return torch.ones(batch.mask.shape[0], dtype=torch.bool, device=batch.mask.device)


def token_advantages(adv: Tensor, w: Tensor) -> Tensor:
    """Â_it = A_i * w_it.  adv: [B], w: [B, T] -> [B, T]."""
    if adv.dim() != 1 or w.dim() != 2 or adv.shape[0] != w.shape[0]:
        raise ValueError(f"need adv [B] and w [B, T]; got {tuple(adv.shape)} and {tuple(w.shape)}")
    return adv[:, None].to(w.dtype) * w


def check_weights(w: Tensor, mask: Tensor, *, mean_one: bool = True, tol: float = WEIGHT_MEAN_TOL) -> None:
    """Raise ValueError unless w meets the credit contract (module doc); return None if it does.

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
    bad = (wd > W_BOUND).any(dim=1)
    if bad.any():
        i = first(bad)
        raise ValueError(f"credit weights of sequence {i} exceed the bound {W_BOUND:.4g} (max {float(wd[i].max()):.4g})")
    if not mean_one:
        return
    n = valid.sum(dim=1)  # [B]
    mean = (wd * valid).sum(dim=1) / n.clamp(min=1)  # [B]
    bad = (n > 0) & ((mean - 1.0).abs() > tol)
    if bad.any():
        i = first(bad)
        raise ValueError(
            f"credit weights of sequence {i} have mean {float(mean[i]):.6g} over its "
            f"{int(n[i])} valid tokens; must be 1 (tol {tol})"
        )
