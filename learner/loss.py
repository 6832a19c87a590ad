"""Off-policy-corrected GRPO loss (DESIGN §5): pure functions of tensors.

What it does:
  * `group_advantages` turns the rewards of one prompt's group into GRPO advantages
    (or Dr. GRPO advantages: no std division).
  * `policy_loss` is the decoupled-PPO objective with clip-higher, dual clip and a
    truncated behaviour importance weight, averaged over all completion tokens of the
    batch, plus the per-step statistics that DESIGN §5 asks to log.
  * `lag_ok` is the staleness rule: a group whose policy lag exceeds `max_lag` is dropped.

What it does NOT do: compute logprobs (see `learner/logprobs.py`), choose the per-token
credit weights (see `learner/credit.py`; the caller passes token advantages
`Â_it = A_i * w_it`), step an optimiser, or count dropped groups.

Equation, per completion token t of sample i (m = completion mask, 1 where valid):

    r_it  = exp(clamp(log π_θ - log π_prox, -MAX_LOG_RATIO, +MAX_LOG_RATIO))
    b_it  = min(exp(log π_prox - log μ), C)                   (stop-grad)
    pg_it = max(-Â r, -Â clip(r, 1 - ε_low, 1 + ε_high))
    pg_it = min(pg_it, c |Â|)                                 where Â < 0 (dual clip)
    L     = Σ_it m b pg / Σ_it m                              (token mean over the batch)

μ is the behaviour policy (the actor's sampler), π_prox the learner's policy at the start
of the update (no grad), π_θ the policy being optimised.  With max_lag = 0 and
log π_θ = log π_prox = log μ at the first step, r = b = 1 and L = -Σ m Â / Σ m whose
gradient is the GRPO / REINFORCE gradient -Σ m Â ∇log π_θ / Σ m.

Sources:
  * decoupled PPO objective (proximal policy separate from behaviour policy):
    AReaL, Fu et al. 2025, "AReaL: A Large-Scale Asynchronous Reinforcement Learning
    System for Language Reasoning".
  * clip-higher (ε_high > ε_low) and token-level mean: DAPO, Yu et al. 2025.
  * truncated importance sampling of the train/inference mismatch: Yao et al. 2025,
    "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training".
  * dual clip for negative advantages: Ye et al. 2020, "Mastering Complex Control in
    MOBA Games with Deep Reinforcement Learning".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_LOG_RATIO = 20.0  # clamp of log π_θ - log π_prox (and log π_prox - log μ) before exp
IS_CAP = 2.0  # C: cap of the truncated behaviour importance weight b
EPS_LOW = 0.2  # ε_low: lower clip 1 - ε_low
EPS_HIGH = 0.28  # ε_high: upper clip 1 + ε_high (clip-higher)
DUAL_CLIP = 3.0  # c: pg <= c |Â| for Â < 0
ADV_EPS = 1e-6  # eps added to the group std in the advantage denominator


def group_advantages(
    rewards: Tensor, *, std_normalize: bool = True, eps: float = ADV_EPS
) -> Tensor:
    """GRPO advantages of one group: `A_i = (R_i - mean_G R) / (std_G R + eps)`.

    `std_G` is the POPULATION standard deviation (`unbiased=False`, divide by G, not
    G - 1), so with G = 2 and rewards (1, 0) the advantages are (+1, -1) up to eps.
    `std_normalize=False` is the Dr. GRPO variant `A_i = R_i - mean_G R`.
    A group whose rewards are all equal (or G = 1) gets exactly zero advantages.

    rewards: [G] -> [G] float32 (float64 stays float64).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [G], got shape {tuple(rewards.shape)}")
    r = rewards if rewards.is_floating_point() else rewards.float()  # [G]
    if r.numel() <= 1 or bool(r.max() == r.min()):
        return torch.zeros_like(r)
    centred = r - r.mean()  # [G]
    if not std_normalize:
        return centred
    return centred / (r.std(unbiased=False) + eps)


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
        raise ValueError(f"policy_loss inputs must all be [B, T]; got {shapes}")


def policy_loss(
    logp: Tensor,
    logp_prox: Tensor,
    logp_behav: Tensor,
    adv: Tensor,
    mask: Tensor,
    *,
    eps_low: float = EPS_LOW,
    eps_high: float = EPS_HIGH,
    dual_clip: float = DUAL_CLIP,
    is_cap: float = IS_CAP,
) -> tuple[Tensor, dict[str, float]]:
    """Decoupled-PPO token loss `L = Σ m b pg / Σ m` (see module docstring).

    All inputs are [B, T] completion tensors, left-aligned, `mask` 1 where a completion
    token is valid and 0 on padding:
      logp        log π_θ(y_t), differentiable
      logp_prox   log π_prox(y_t), treated as a constant (detached here)
      logp_behav  log μ(y_t) from the actor, constant (detached here)
      adv         token advantages Â_it = A_i w_it, constant (detached here)
    Values at padding positions are ignored, even if they are inf or NaN.

    Normaliser: the number of valid tokens in the whole batch, Σ m (DAPO token mean), so
    long completions carry more weight than short ones. If Σ m = 0 the loss is a zero
    that still has a (zero) gradient with respect to `logp`.

    Returns (loss scalar, stats). Stats are python floats over valid tokens (N = Σ m):
      ess            (Σ b)^2 / (N Σ b^2), effective sample size fraction in (0, 1]
      clip_frac_low  share of tokens with Â < 0 and r < 1 - ε_low (clipped branch active)
      clip_frac_high share of tokens with Â > 0 and r > 1 + ε_high (clipped branch active)
      dual_clip_frac share of tokens with Â < 0 where the dual clip c |Â| is active
      is_trunc_frac  share of tokens where exp(log π_prox - log μ) >= C (b hit C)
      mismatch       mean |log π_prox - log μ| (train/inference mismatch)
      ratio_mean     mean r
      tokens         N
    With N = 0 every stat is 0.0.
    """
    _check_same_shape(logp=logp, logp_prox=logp_prox, logp_behav=logp_behav, adv=adv, mask=mask)
    if not (0.0 <= eps_low < 1.0 and eps_high >= 0.0):
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if dual_clip <= 1.0 + eps_high:
        raise ValueError(f"dual_clip must exceed 1 + eps_high = {1 + eps_high}, got {dual_clip}")
    if is_cap <= 0.0:
        raise ValueError(f"is_cap must be positive, got {is_cap}")

    valid = mask > 0  # [B, T] bool
    m = mask.to(logp.dtype)  # [B, T]
    # Padding values may be -inf/NaN: replace them before any arithmetic so neither the
    # forward value nor the backward pass sees them (torch.where passes zero grad there).
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    lp = torch.where(valid, logp, zero)  # [B, T], carries grad
    lp_prox = torch.where(valid, logp_prox.detach().to(logp.dtype), zero)  # [B, T]
    lp_behav = torch.where(valid, logp_behav.detach().to(logp.dtype), zero)  # [B, T]
    a = torch.where(valid, adv.detach().to(logp.dtype), zero)  # [B, T]

    log_ratio = torch.clamp(lp - lp_prox, -MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
    r = torch.exp(log_ratio)  # [B, T]
    log_b_raw = torch.clamp(lp_prox - lp_behav, -MAX_LOG_RATIO, MAX_LOG_RATIO)  # [B, T]
    b = torch.clamp(torch.exp(log_b_raw), max=is_cap)  # [B, T], constant

    pg_unclipped = -a * r  # [B, T]
    pg_clipped = -a * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)  # [B, T]
    pg_ppo = torch.maximum(pg_unclipped, pg_clipped)  # [B, T]
    neg = a < 0  # [B, T]
    dual_bound = dual_clip * a.abs()  # [B, T]
    pg = torch.where(neg, torch.minimum(pg_ppo, dual_bound), pg_ppo)  # [B, T]

    n_tokens = m.sum()
    loss = (m * b * pg).sum() / torch.clamp(n_tokens, min=1.0)

    with torch.no_grad():
        n = int(valid.sum().item())
        if n == 0:
            keys = ("ess", "clip_frac_low", "clip_frac_high", "dual_clip_frac",
                    "is_trunc_frac", "mismatch", "ratio_mean", "tokens")
            return loss, {k: 0.0 for k in keys}
        bv = b[valid].double()  # [N]
        rv = r[valid].double()  # [N]
        av = a[valid]  # [N]
        stats = {
            "ess": float(bv.sum() ** 2 / (n * (bv**2).sum())),
            "clip_frac_low": float(((av < 0) & (rv < 1.0 - eps_low)).sum()) / n,
            "clip_frac_high": float(((av > 0) & (rv > 1.0 + eps_high)).sum()) / n,
            "dual_clip_frac": float((neg & (pg_ppo > dual_bound))[valid].sum()) / n,
            "is_trunc_frac": float((log_b_raw[valid] >= math.log(is_cap)).sum()) / n,
            "mismatch": float((lp_prox - lp_behav)[valid].abs().double().mean()),
            "ratio_mean": float(rv.mean()),
            "tokens": float(n),
        }
    return loss, stats


def lag_ok(version_learner: int, version_behaviour: int, max_lag: int) -> bool:
    """True when a group generated with `version_behaviour` may train `version_learner`.

    Policy lag = version_learner - version_behaviour; a group is kept iff
    0 <= lag <= max_lag. `max_lag = 0` is synchronous on-policy training.
    A negative lag (behaviour weights newer than the learner's, possible only after a
    learner restart from an older checkpoint) is not ok: those weights no longer exist.
    """
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    lag = version_learner - version_behaviour
    return 0 <= lag <= max_lag
