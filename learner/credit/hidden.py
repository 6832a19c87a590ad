"""Projected hidden-state summaries computed by the learner (for the `hidden` credit variant).

What it does: for samples whose actor sent no `hidden` summary (vLLM engines, older
actors), one no-grad forward pass per micro-batch of prompt + completion captures the
input of the output embedding (the last-layer state the logits come from) at the
positions that predict each completion token, and projects it with the fixed matrix of
`protocol.summaries`: the same quantity an HF actor computes while sampling, but under
the learner's current weights rather than the behaviour policy's.

What it does not do: replace summaries an actor did send, or keep the full [B, L, H]
states (only the T + 1 positions the logits are kept for).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from learner.logprobs import build_batch
from protocol.summaries import HIDDEN_K, project, projection


@torch.no_grad()
def hidden_summaries(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]],
                     completions: Sequence[Sequence[int]], pad_id: int, *, k: int = HIDDEN_K,
                     micro_batch: int = 32) -> list[np.ndarray]:
    """Per sample a float16 [T_i, k] array: projected state predicting completion token t."""
    head = model.get_output_embeddings()
    r = projection(head.in_features, k)
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for lo in range(0, len(completions), micro_batch):
        batch = build_batch(list(prompt_ids[lo:lo + micro_batch]), list(completions[lo:lo + micro_batch]), pad_id)
        T = int(batch["n_completion"])
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  position_ids=batch["position_ids"].to(device), logits_to_keep=T + 1, use_cache=False)
        finally:
            hook.remove()
        h = seen[-1]  # [b, T+1, H]: window index w <-> absolute position L - T - 1 + w
        z = project(h, r).cpu().numpy()  # [b, T+1, k]
        for i, c in enumerate(completions[lo:lo + micro_batch]):
            n = len(c)  # token t of this row is predicted by window index T - n + t
            out.append(z[i, T - n:T].copy())
    return out
