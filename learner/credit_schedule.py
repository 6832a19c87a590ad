"""λ schedule and reliability gate of the SCCA credit (DESIGN §6 step 6).

What it does:
  * `LambdaSchedule.update(step, mean_s_incorrect, mean_s_correct) -> λ`:
        ramp(step) = 0                                            step < warmup_steps
                   = lam_max * min(1, (step - warmup_steps) / ramp_steps)   otherwise
                     (ramp_steps = 0: lam_max right after the warm-up)
        ratio      = mean_s_incorrect / max(mean_s_correct, RATIO_EPS)
        ratio_ema  = ratio on the first observation, else ema * ratio_ema + (1 - ema) * ratio
        gate_open  = ratio_ema >= gate_ratio      (gate_ratio <= 0 disables the gate)
        λ          = ramp(step) if gate_open else 0
    The gate is not sticky: λ returns to 0 whenever the EMA falls below gate_ratio. A step
    without both kinds of scored samples (a mean is None or NaN) leaves the EMA as it is.
    `.lam`, `.gate_open`, `.ratio_ema`, `metrics()` expose the state for logging;
    `state_dict` / `load_state_dict` are JSON-able for checkpoints.
  * `score_means(s, mask, adv, has_teacher)`: the two means the gate reads, from one
    batch of teacher scores: mean over sequences of the per-sequence token mean of s,
    over samples with A < 0 (incorrect) and with A > 0 (correct) that have a teacher.

What it does NOT do: compute the scores (`learner/teacher.py`) or the weights
(`learner/credit.py`). The ramp clock is the training step, not the time the gate opened:
a gate that opens late lets λ jump straight to its ramp value.
"""

from __future__ import annotations

import math

from torch import Tensor

RATIO_EPS = 1e-8  # floor of mean s(correct) in the gate ratio


class LambdaSchedule:
    """λ = ramp(step) while the reliability gate is open, else 0 (module doc)."""

    def __init__(self, lam_max: float = 0.5, warmup_steps: int = 0, ramp_steps: int = 0,
                 gate_ratio: float = 1.2, ema: float = 0.9) -> None:
        if not 0.0 <= lam_max <= 1.0:
            raise ValueError(f"lam_max must lie in [0, 1]; got {lam_max}")
        if warmup_steps < 0 or ramp_steps < 0:
            raise ValueError(f"warmup_steps and ramp_steps must be >= 0; got {warmup_steps}, {ramp_steps}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1); got {ema}")
        self.lam_max, self.warmup_steps, self.ramp_steps = lam_max, warmup_steps, ramp_steps
        self.gate_ratio, self.ema = gate_ratio, ema
        self.ratio_ema: float | None = None
        self.lam = 0.0

    def ramp(self, step: int) -> float:
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return self.lam_max
        return self.lam_max * min(1.0, (step - self.warmup_steps) / self.ramp_steps)

    @property
    def gate_open(self) -> bool:
        if self.gate_ratio <= 0:
            return True
        return self.ratio_ema is not None and self.ratio_ema >= self.gate_ratio

    def update(self, step: int, mean_s_incorrect: float | None, mean_s_correct: float | None) -> float:
        """Fold in this step's score means and return λ for this step."""
        ok = all(x is not None and math.isfinite(x) for x in (mean_s_incorrect, mean_s_correct))
        if ok:
            ratio = float(mean_s_incorrect) / max(float(mean_s_correct), RATIO_EPS)
            self.ratio_ema = ratio if self.ratio_ema is None else self.ema * self.ratio_ema + (1 - self.ema) * ratio
        self.lam = self.ramp(step) if self.gate_open else 0.0
        return self.lam

    def metrics(self) -> dict[str, float]:
        return {"credit/lambda": self.lam, "credit/gate_open": float(self.gate_open),
                "credit/ratio_ema": float("nan") if self.ratio_ema is None else self.ratio_ema}

    def state_dict(self) -> dict:
        return {"ratio_ema": self.ratio_ema, "lam": self.lam}

    def load_state_dict(self, state: dict) -> None:
        self.ratio_ema, self.lam = state["ratio_ema"], float(state["lam"])


def score_means(s: Tensor, mask: Tensor, adv: Tensor, has_teacher: Tensor | None = None) -> tuple[float | None, float | None]:
    """(mean s over incorrect samples, mean s over correct samples); None where there is none.

    Per sequence i: s̄_i = Σ_t m s / Σ_t m (sequences without valid tokens are skipped);
    incorrect = A_i < 0, correct = A_i > 0, both restricted to has_teacher.
    """
    m = (mask > 0).double()  # [B, T]
    n = m.sum(dim=1)  # [B]
    seq = (s.detach().double() * m).sum(dim=1) / n.clamp(min=1)  # [B]
    keep = n > 0
    if has_teacher is not None:
        keep = keep & has_teacher.bool()

    def mean(sel: Tensor) -> float | None:
        return float(seq[sel].mean()) if bool(sel.any()) else None

    return mean(keep & (adv < 0)), mean(keep & (adv > 0))
