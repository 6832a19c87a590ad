"""Reference contexts for the SCCA teacher pass (DESIGN §6 step 1) and the bank they fall back on.

What it does:
  * `SolutionBank` keeps verified (correct) solution texts per prompt id, newest first,
    at most `max_per_prompt` per prompt and `max_total` overall (the globally oldest
    entry is evicted first). Adding a text already banked for that prompt makes it the
    newest again (no duplicates). `to_dict` / `from_dict` give a JSON-able state.
  * `pick_contexts` chooses, for every sample i of one group with A_i ≠ 0 (the group's
    rewards are not all equal), a correct sibling j ≠ i at random; if there is none,
    the newest banked solution of the prompt; else None. `pick_wrong_contexts` chooses
    a wrong sibling j ≠ i (for `sc_contrast`), else None.

Never self-conditioning: a context is never sample i itself, and by default never a
text identical to i's own text either (a sibling or bank entry that is the same string
is i's own solution in all but index). Consequence: where every correct answer is one
identical string (`arith`), a correct sample finds no context and keeps w ≡ 1; pass
`allow_identical=True` to condition on identical *siblings* anyway (an ablation; the bank
fallback still never returns i's own text).
Correct means reward >= `correct_threshold` (1.0 by default, the verifiers' binary
reward); A_i ≠ 0 means reward_i differs from the group mean.

What it does NOT do: verify anything (the caller adds only verified-correct texts),
run the teacher pass, or write files (`CreditStep.state_dict` carries `to_dict()` into
the trainer's checkpoint, so a resumed run keeps its bank). Order of calls within a step does not
matter for self-conditioning: the bank fallback also skips texts identical to i's.
"""

from __future__ import annotations

import random
from collections import OrderedDict

CORRECT_THRESHOLD = 1.0  # reward at or above this counts as a verified solution
MEAN_TOL = 1e-9  # |reward - group mean| below this is A = 0


class SolutionBank:
    """Per-prompt verified solutions, newest first; bounded per prompt and in total."""

    def __init__(self, max_per_prompt: int = 8, max_total: int = 100_000) -> None:
        if max_per_prompt < 1 or max_total < 1:
            raise ValueError(f"bounds must be >= 1; got {max_per_prompt}, {max_total}")
        self.max_per_prompt, self.max_total = max_per_prompt, max_total
        self._by_prompt: dict[str, OrderedDict[str, None]] = {}  # prompt -> texts, oldest first
        self._order: OrderedDict[tuple[str, str], None] = OrderedDict()  # all entries, oldest first

    def __len__(self) -> int:
        return len(self._order)

    def add(self, prompt_id: str, text: str) -> None:
        """Bank a verified solution as the newest of its prompt, evicting beyond the bounds."""
        texts = self._by_prompt.setdefault(prompt_id, OrderedDict())
        key = (prompt_id, text)
        if key in self._order:
            texts.move_to_end(text)
            self._order.move_to_end(key)
            return
        texts[text] = None
        self._order[key] = None
        if len(texts) > self.max_per_prompt:
            old, _ = texts.popitem(last=False)
            del self._order[(prompt_id, old)]
        while len(self._order) > self.max_total:
            (pid, old), _ = self._order.popitem(last=False)
            del self._by_prompt[pid][old]
            if not self._by_prompt[pid]:
                del self._by_prompt[pid]

    def solutions(self, prompt_id: str) -> list[str]:
        """Banked texts of one prompt, newest first."""
        return list(reversed(self._by_prompt.get(prompt_id, {})))

    def newest(self, prompt_id: str, exclude: str | None = None) -> str | None:
        """The newest banked text of the prompt that is not `exclude`, or None."""
        return next((t for t in self.solutions(prompt_id) if t != exclude), None)

    def to_dict(self) -> dict:
        """JSON-able state: bounds and every (prompt, text) entry, oldest first."""
        return {"max_per_prompt": self.max_per_prompt, "max_total": self.max_total,
                "entries": [list(k) for k in self._order]}

    @classmethod
    def from_dict(cls, state: dict) -> "SolutionBank":
        bank = cls(state["max_per_prompt"], state["max_total"])
        for pid, text in state["entries"]:
            bank.add(pid, text)
        return bank


def _nonzero_adv(rewards: list[float]) -> list[bool]:
    """A_i ≠ 0 per sample: reward differs from the group mean (all False without variance)."""
    mean = sum(rewards) / len(rewards)
    return [abs(r - mean) > MEAN_TOL for r in rewards]


def _check(group_texts: list[str], rewards: list[float]) -> None:
    if len(group_texts) != len(rewards) or not rewards:
        raise ValueError(f"need one reward per text (>0); got {len(group_texts)} texts, {len(rewards)} rewards")


def pick_contexts(
    group_texts: list[str],
    rewards: list[float],
    prompt_id: str,
    bank: SolutionBank,
    rng: random.Random,
    *,
    correct_threshold: float = CORRECT_THRESHOLD,
    allow_identical: bool = False,
) -> list[str | None]:
    """Correct-reference context per sample of one group (module doc); None = no teacher.

    For i with A_i ≠ 0: uniform choice (rng) among correct siblings j ≠ i whose text
    differs from i's (any j ≠ i if allow_identical); else bank.newest(prompt_id) excluding
    i's text (always: the bank may already hold sample i itself); else None. A_i = 0 gives None.
    """
    _check(group_texts, rewards)
    out: list[str | None] = []
    correct = [r >= correct_threshold for r in rewards]
    for i, active in enumerate(_nonzero_adv(rewards)):
        if not active:
            out.append(None)
            continue
        own = group_texts[i]
        cands = [group_texts[j] for j in range(len(rewards))
                 if j != i and correct[j] and (allow_identical or group_texts[j] != own)]
        if cands:
            out.append(rng.choice(cands))
        else:
            out.append(bank.newest(prompt_id, exclude=own))  # the bank may already hold i itself
    return out


def pick_wrong_contexts(
    group_texts: list[str],
    rewards: list[float],
    rng: random.Random,
    *,
    correct_threshold: float = CORRECT_THRESHOLD,
) -> list[str | None]:
    """Wrong-sibling context per sample (for `sc_contrast`): j ≠ i, reward_j < threshold,
    text_j ≠ text_i, chosen uniformly with rng; None if there is none or A_i = 0."""
    _check(group_texts, rewards)
    out: list[str | None] = []
    for i, active in enumerate(_nonzero_adv(rewards)):
        cands = [group_texts[j] for j in range(len(rewards))
                 if j != i and rewards[j] < correct_threshold and group_texts[j] != group_texts[i]]
        out.append(rng.choice(cands) if active and cands else None)
    return out
