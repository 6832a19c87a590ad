"""The one registry of token-credit methods (DESIGN §6): what each variant is and needs.

What it does: `CREDIT_METHODS` maps every `[credit] method` name to a `CreditMethod` spec:
the function that computes its weights (a "module:attribute" path into
`learner/credit/`, resolved there), which inputs it needs (a teacher pass with a correct
reference, a second pass with a wrong sibling, the verifier's first wrong character, the
actors' entropy or hidden-state summaries), its λ schedule, whether the reliability gate
applies, and whether it keeps every sequence's mean weight at 1 (the advantage mass) or
moves mass between sequences and tokens (the round-3 arms). Config validation
(`protocol/config.py`), the credit step (`learner/credit/step.py`) and `scca compare`
(`deploy/compare.py`) all read this table, so a new variant is one function plus one
entry here. `REFERENCE_TEMPLATE` is the teacher's context template, defined once for the
config default, the teacher pass and the SFT bootstrap.

What it does NOT do: import the functions (protocol imports nothing of ours; the learner
resolves the paths), or compute anything.

Schedules (λ in w = (1 - λ) + λ u; see `learner/credit/schedule.py`):
  off   λ = 0 (uniform)
  ramp  0 during `warmup_steps`, then linear to `lam_max` over `ramp_steps`
  one   λ = 1 from step 0 (the arm is defined without a mixing weight)
  decay λ = decay_from * max(0, 1 - step / decay_steps)   (RLSD's schedule)
`gated` adds DESIGN §6 step 6: λ = 0 while the EMA of mean s(incorrect) / mean s(correct)
is below `gate_ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

REFERENCE_TEMPLATE = "Reference solution:\n{c}\n\n{prompt}"  # {c}: a verified solution, {prompt}: the prompt
SCHEDULES = ("off", "ramp", "one", "decay")
INPUTS = ("entropy", "hidden", "first_wrong")


@dataclass(frozen=True)
class CreditMethod:
    """One credit variant (module doc). `function` is "module:attribute" under learner/credit/."""

    function: str
    summary: str
    needs_teacher: bool = False  # teacher pass with a correct reference in context
    needs_wrong_context: bool = False  # second teacher pass with a wrong sibling in context
    inputs: tuple[str, ...] = ()  # of INPUTS: actor summaries / verifier details the weights read
    schedule: Literal["off", "ramp", "one", "decay"] = "ramp"
    gated: bool = False  # reliability gate on top of the schedule (needs the teacher's scores)
    mean_one: bool = True  # mean_t w = 1 on every sequence (else: only w >= 0, w <= W_BOUND)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES or any(i not in INPUTS for i in self.inputs):
            raise ValueError(f"bad credit spec {self}: schedule in {SCHEDULES}, inputs in {INPUTS}")
        if (self.gated or self.needs_wrong_context) and not self.needs_teacher:
            raise ValueError(f"a gated or contrastive credit method needs the teacher pass: {self}")


_V = "learner.credit.variants:"
_C = "learner.credit.cuts:"

CREDIT_METHODS: dict[str, CreditMethod] = {
    "uniform": CreditMethod(_V + "uniform", "GRPO: every token gets its sequence's advantage", schedule="off"),
    "sc_kl": CreditMethod(_V + "sc_kl", "SCCA steps 1-6: w from KL(plain || reference-conditioned), mean 1",
                          needs_teacher=True, gated=True),
    "sc_prefix": CreditMethod(_V + "sc_prefix", "sc_kl up to the first divergence, w = 1 after",
                              needs_teacher=True, gated=True),
    "sc_unshared": CreditMethod(_V + "sc_unshared", "sc_kl on tokens no opposite-sign sibling shares",
                                needs_teacher=True, gated=True),
    "sc_pos": CreditMethod(_V + "sc_pos", "sc_kl on correct samples only", needs_teacher=True, gated=True),
    "sc_contrast": CreditMethod(_V + "sc_contrast", "RLCSD: KL to the correct minus KL to a wrong reference",
                                needs_teacher=True, needs_wrong_context=True, gated=True),
    "sc_signed": CreditMethod(_V + "sc_signed", "RLSD: clipped signed teacher/plain ratio, mean 1",
                              needs_teacher=True, gated=True),
    "entropy": CreditMethod(_V + "entropy", "GTPO-style: w from the behaviour entropy", inputs=("entropy",)),
    "hidden": CreditMethod(_V + "hidden", "w from projected hidden states vs the group's correct/wrong means",
                           inputs=("hidden",)),
    "shuffled": CreditMethod(_V + "shuffled", "control: sc_kl weights permuted within each sequence",
                             needs_teacher=True, gated=True),
    # round 3 (issue 10): arms that move mass, not only redistribute it
    "verifier": CreditMethod(_C + "verifier", "O: wrong samples w = 1 up to the verifier's first wrong token, 0 after",
                             inputs=("first_wrong",), schedule="one", mean_one=False),
    "sc_cut": CreditMethod(_C + "sc_cut", "T: the verifier cut placed at the self-teacher's first divergence",
                           needs_teacher=True, schedule="one", mean_one=False),
    "sc_cut_shuffled": CreditMethod(_C + "sc_cut_shuffled", "R: sc_cut's cut points permuted among wrong samples",
                                    needs_teacher=True, schedule="one", mean_one=False),
    "sc_grpo": CreditMethod(_C + "sc_grpo", "K: SC-GRPO as the abstract states it, w = min(s / batch mean s, cap)",
                            needs_teacher=True, schedule="one", mean_one=False),
    "sc_grpo_rlsd": CreditMethod(_C + "sc_grpo", "K with RLSD's schedule: λ from decay_from to 0 over decay_steps",
                                 needs_teacher=True, schedule="decay", mean_one=False),
}

COMPARE_ALIASES = {"grpo": "uniform"}  # `scca compare` names -> config method names


def method_names() -> tuple[str, ...]:
    return tuple(CREDIT_METHODS)
