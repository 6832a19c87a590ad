"""λ schedules and the reliability gate of token credit (DESIGN §6 step 6).

What it does:
  * `LambdaSchedule.update(step, mean_s_incorrect, mean_s_correct) -> λ`, with the
    schedule `kind` a method's spec names (protocol/credit_methods.py):
        off    λ = 0
        ramp   0 for step < warmup_steps, then lam_max * min(1, (step - warmup_steps) / ramp_steps)
               (ramp_steps = 0: lam_max right after the warm-up)
        one    λ = 1
        decay  decay_from * max(0, 1 - step / decay_steps)          (RLSD)
    and, when `gated`, the reliability gate on top:
        ratio      = mean_s_incorrect / max(mean_s_correct, RATIO_EPS)
        ratio_ema  = ratio on the first observation, else ema * ratio_ema + (1 - ema) * ratio
        gate_open  = ratio_ema >= gate_ratio      (gate_ratio <= 0 disables the gate)
        λ          = schedule(step) if gate_open else 0
    The gate is not sticky: λ returns to 0 whenever the EMA falls below gate_ratio. A step
    without both kinds of scored samples (a mean is None or NaN) leaves the EMA as it is.
    `.lam`, `.gate_open`, `.ratio_ema`, `metrics()` expose the state for logging;
    `state_dict` / `load_state_dict` are JSON-able for checkpoints (the EMA is the only
    state besides the step, which the trainer's checkpoint holds).
  * `score_means(s, mask, adv, has_teacher)`: the two means the gate reads, from one
    batch of teacher scores: mean over sequences of the per-sequence token mean of s,
    over samples with A < 0 (incorrect) and with A > 0 (correct) that have a teacher.

What it does NOT do: compute the scores (`teacher.py`) or the weights (`variants.py`,
`cuts.py`). The ramp clock is the training step, not the time the gate opened: a gate
that opens late lets λ jump straight to its ramp value.
"""

from __future__ import annotations

import math

from torch import Tensor

from protocol.credit_methods import SCHEDULES

RATIO_EPS = 1e-8  # floor of mean s(correct) in the gate ratio


class LambdaSchedule:
    """λ = schedule(step) while the reliability gate is open (always, when not gated), else 0 (module doc)."""

    def __init__(self, lam_max: float = 0.5, warmup_steps: int = 0, ramp_steps: int = 0,
                 gate_ratio: float = 1.2, ema: float = 0.9, *, kind: str = "ramp", gated: bool = True,
                 decay_from: float = 0.5, decay_steps: int = 50) -> None:
        if not 0.0 <= lam_max <= 1.0 or not 0.0 <= decay_from <= 1.0:
            raise ValueError(f"lam_max and decay_from must lie in [0, 1]; got {lam_max}, {decay_from}")
        if warmup_steps < 0 or ramp_steps < 0 or decay_steps < 1:
            raise ValueError(f"need warmup_steps, ramp_steps >= 0 and decay_steps >= 1; "
                             f"got {warmup_steps}, {ramp_steps}, {decay_steps}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must lie in [0, 1); got {ema}")
        if kind not in SCHEDULES:
            raise ValueError(f"schedule kind must be one of {SCHEDULES}; got {kind!r}")
        self.lam_max, self.warmup_steps, self.ramp_steps = lam_max, warmup_steps, ramp_steps
        self.kind, self.decay_from, self.decay_steps = kind, decay_from, decay_steps
        self.gate_ratio, self.ema = (gate_ratio if gated else 0.0), ema
        self.ratio_ema: float | None = None
        self.lam = 0.0

    @classmethod
    def for_method(cls, spec, cfg) -> "LambdaSchedule":
        """The schedule a method's spec (CreditMethod) names, with the [credit] config's numbers."""
        return cls(lam_max=cfg.lam_max, warmup_steps=cfg.warmup_steps, ramp_steps=cfg.ramp_steps,
                   gate_ratio=cfg.gate_ratio, kind=spec.schedule, gated=spec.gated,
                   decay_from=cfg.decay_from, decay_steps=cfg.decay_steps)

    def base(self, step: int) -> float:
        """λ of the schedule alone (no gate) at `step`."""
        return getattr(self, "_" + self.kind)(step)

    def _off(self, step: int) -> float:
        return 0.0

    def _one(self, step: int) -> float:
        return 1.0

    def _decay(self, step: int) -> float:
        return self.decay_from * max(0.0, 1.0 - step / self.decay_steps)

    def _ramp(self, step: int) -> float:
        return self.ramp(step)

    def ramp(self, step: int) -> float:
        """The warm-up ramp: 0 before warmup_steps, then linear to lam_max over ramp_steps."""
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
        self.lam = self.base(step) if self.gate_open else 0.0
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
