"""One optimiser update on a batch of scored groups (DESIGN §5): the trainer's forward/backward.

What it does, top to bottom:
  `flatten_groups` (prompt token ids once per group, GRPO advantages per group, one row
  per sample) -> credit weights w [N, T] (the caller's `CreditStep`) -> `length_buckets`
  (rows sorted by prompt + completion length and cut into micro-batches of at most
  `micro_batch` rows, so each micro-batch is padded only to its own longest row) ->
  per micro-batch: one forward, `policy_loss`, backward of `loss * share` where
  share = (valid tokens of the micro-batch) / (valid tokens of the batch), so the
  gradient is exactly that of the batch token mean `Σ m b pg / Σ m` -> global grad-norm
  clip -> AdamW step.

The one forward per micro-batch gives log π_θ with grad; log π_prox is the same tensor
detached (one optimiser step per batch: π_prox = π_θ before the step), so there is no
second (no-grad) forward. Padding-free packing (all rows in one sequence with restarting
position ids) is not used: without a variable-length attention kernel (flash-attn on
GPUs) the block-diagonal mask makes attention quadratic in the packed length, which on
CPU costs more than the padding it saves; sorting by length removes most padding instead.

What it does not do: pick credit weights, drop groups, or touch the hub, snapshots or
checkpoints (the trainer does).
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass

import numpy as np
import torch

from learner.credit import token_advantages
from learner.logprobs import build_batch, pad_right, token_logprobs
from learner.loss import group_advantages, policy_loss


@dataclass
class FlatBatch:
    """The samples of a list of groups, one row each (N rows, group order kept)."""

    prompt_ids: list[list[int]]  # [N] prompt token ids (shared list object within a group)
    completions: list[list[int]]  # [N] completion token ids
    behav: list[np.ndarray]  # [N] behaviour logprobs log μ, float32 [T_i]
    adv: torch.Tensor  # [N] float32 sequence advantages A_i

    @property
    def n_tokens(self) -> int:
        return sum(len(c) for c in self.completions)


def flatten_groups(groups: list, encode: Callable[[str], list[int]], *, std_normalize: bool) -> FlatBatch:
    """One row per sample; `A_i = (R_i - mean_G R) / (std_G R + eps)` per group (loss.group_advantages).
    A group's prompt ids are the ones its actor generated from (`g.prompt_ids`, rendered by
    the learner in the run's prompt format), else `encode(g.prompt)`; once per group, not
    once per sample."""
    prompt_ids, completions, behav, adv = [], [], [], []
    for g in groups:
        ids = [int(i) for i in g.prompt_ids] if getattr(g, "prompt_ids", None) is not None else encode(g.prompt)
        a = group_advantages(torch.tensor(g.rewards, dtype=torch.float32), std_normalize=std_normalize)
        for s, a_i in zip(g.samples, a.tolist()):
            prompt_ids.append(ids)
            completions.append(s["token_ids"].tolist())
            behav.append(s["logprobs"])
            adv.append(a_i)
    return FlatBatch(prompt_ids, completions, behav, torch.tensor(adv, dtype=torch.float32))


def length_buckets(lengths: list[int], max_rows: int) -> list[list[int]]:
    """Row indices sorted by length (longest first, ties by index), cut into consecutive
    micro-batches of at most `max_rows` rows.

    Padded cost of a micro-batch = rows x its longest row; sorting makes neighbours alike,
    so Σ_b rows_b max_b is never above what the unsorted order costs with the same cut
    and is usually well below. Every index appears exactly once.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[lo:lo + max_rows] for lo in range(0, len(order), max_rows)]


def padded_tokens(lengths: list[int], buckets: list[list[int]]) -> int:
    """Σ over micro-batches of rows x longest row: the positions the forward passes run."""
    return sum(len(b) * max(lengths[i] for i in b) for b in buckets if b)


def micro_batch_loss(model, flat: FlatBatch, rows: list[int], w_all: torch.Tensor, loss_cfg, pad_id: int,
                     autocast, sampling: dict) -> tuple[torch.Tensor, dict, int]:
    """Token-mean loss of the rows `rows` (one forward pass), its stats and valid token count.
    `sampling` ({"temperature", "top_p"}) is the actors' distribution: log π is taken under
    it, so the ratio π/μ compares like with like."""
    dev = w_all.device
    batch = build_batch([flat.prompt_ids[i] for i in rows], [flat.completions[i] for i in rows], pad_id)
    with autocast:  # bf16 matmuls on CUDA; token_logprobs' log_softmax stays fp32
        logp, mask, _ = token_logprobs(model, batch, **sampling)  # [b,T], [b,T]
    T = logp.shape[1]
    idx = torch.tensor(rows, dtype=torch.long, device=dev)  # [b]
    logp_behav = pad_right([flat.behav[i] for i in rows], T, 0.0).to(dev)  # [b,T]
    adv_tok = token_advantages(flat.adv.to(dev)[idx], w_all[idx, :T])  # [b,T]
    loss, stats = policy_loss(logp, logp.detach(), logp_behav, adv_tok, mask,
                              eps_low=loss_cfg.eps_low, eps_high=loss_cfg.eps_high,
                              dual_clip=loss_cfg.dual_clip, is_cap=loss_cfg.is_cap)
    return loss, stats, int(mask.sum())


def policy_update(model, optimizer, flat: FlatBatch, w_all: torch.Tensor, *, loss_cfg, micro_batch: int,
                  grad_clip: float, pad_id: int, bf16: bool = True, temperature: float = 1.0,
                  top_p: float = 1.0) -> dict:
    """Backward of `L = Σ m b pg / Σ m` over length-bucketed micro-batches, clip, one AdamW step.

    w_all: [N, T] credit weights (T = longest completion). Returns the loss, the token-
    weighted means of policy_loss's stats, grad_norm, tokens, and `padded_tokens` /
    `padding_frac` (positions run vs. valid prompt + completion positions), and
    `grad_clipped` (1 when the norm before clipping exceeded grad_clip).
    """
    dev = next(model.parameters()).device
    w_all = w_all.to(dev)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" and bf16)
    lengths = [len(p) + len(c) for p, c in zip(flat.prompt_ids, flat.completions)]
    buckets = length_buckets(lengths, micro_batch)
    total = flat.n_tokens
    model.train()
    sums: dict[str, float] = {}
    loss_total = 0.0
    for rows in buckets:
        loss, stats, n = micro_batch_loss(model, flat, rows, w_all, loss_cfg, pad_id, autocast,
                                          {"temperature": temperature, "top_p": top_p})
        share = n / max(total, 1)
        (loss * share).backward()
        loss_total += float(loss.detach()) * share
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v * share
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    run = padded_tokens(lengths, buckets)
    return {**sums, "loss": loss_total, "grad_norm": float(grad_norm),  # norm before clipping
            "grad_clipped": float(float(grad_norm) > grad_clip), "tokens": total,
            "padded_tokens": run, "padding_frac": 1.0 - sum(lengths) / max(run, 1)}
