"""Token credit assignment (DESIGN §6): which tokens of an answer carry its advantage.

Modules, in the order a step uses them:
  registry     method name -> (spec from protocol/credit_methods.py, weight function)
  contexts     solution bank and reference-context choice (step 1)
  teacher      the no-grad teacher pass: KL(plain || reference-conditioned) (steps 2–3)
  schedule     λ schedules and the reliability gate (step 6)
  batch        CreditBatch (what a variant reads) and the weight contract
  normalise    scores -> mean-one weights with a cap that holds (water-filling, steps 4–5)
  variants     the mean-one variants (uniform, sc_kl, ... shuffled)
  cuts         the round-3 arms that move mass (verifier, sc_cut, sc_cut_shuffled, sc_grpo)
  hidden       projected hidden states computed by the learner for `hidden`
  diagnostics  first-error mass / AUROC, character -> token offsets, weight statistics
  html         credit.html heatmaps
  step         CreditStep: the per-step pipeline the trainer calls, and its checkpoint state

What this package does NOT do: compute the loss (learner/loss.py) or step the optimiser.
"""

from learner.credit.batch import CreditBatch, check_weights, token_advantages
from learner.credit.registry import REGISTRY, variant

__all__ = ["CreditBatch", "check_weights", "token_advantages", "REGISTRY", "variant"]
