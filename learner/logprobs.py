"""Per-token log-probabilities of completions under a causal LM (learner side).

What it does:
  * `build_batch` left-pads prompt+completion sequences into model inputs with explicit
    position ids (a left-padded row gets the same positions as the unpadded sequence).
  * `token_logprobs` runs one forward pass and returns log π(y_t | x, y_<t) for every
    completion token, in the trainer's layout: completion tensors [B, T], left-aligned
    (completion token t of row i at column t), padding after, mask 1 where valid.
    Optionally also the entropy of π(· | x, y_<t) at each completion position.
  * `pad_right` packs ragged per-sample arrays (e.g. the actors' behaviour logprobs)
    into that same [B, T] layout.

Log-probabilities are those of the actors' sampling distribution (DESIGN §5), so the
behaviour importance weight b = π_prox / μ compares like with like:
    π_t = softmax(z_t / temperature) restricted to the top-p nucleus and renormalised
    (`nucleus_mask`: the rule of HF's TopPLogitsWarper and vLLM: sort ascending, drop the
    tokens whose cumulative probability is <= 1 - top_p, keep at least the most likely).
The sampled token is always kept in the nucleus: a token the actor drew must have a
finite log-probability even when the learner's slightly different weights put it just
outside its own nucleus. top_p = 1 is the full softmax at the temperature.

What it does NOT do: sample, apply top-k, or compute any loss.

The logits at sequence position j predict the token at j + 1. log_softmax is taken in
float32, a chunk of rows at a time, and only at the T + 1 last positions
(`logits_to_keep`), so the [B, L, V] logits are never materialised in full.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

LOGSOFTMAX_CHUNK_ELEMS = 1 << 26  # max rows * T * V float32 elements per log_softmax chunk


def build_batch(
    prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int
) -> dict[str, Tensor | int]:
    """Left-pad each sequence `prompt + completion` to the longest length L.

    Returns
      input_ids        [B, L] long   pad_id on the left
      attention_mask   [B, L] long   1 on real tokens
      position_ids     [B, L] long   cumsum(attention_mask) - 1, clamped at 0
      completion_mask  [B, L] long   1 on completion token positions (the row's tail)
      n_completion     int           T = longest completion length
    Every prompt must have at least one token (the first completion token needs a
    position that predicts it). Completions may be empty.
    """
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(
            f"need equally many prompts and completions (>0); got {len(prompt_ids)}, {len(completion_ids)}"
        )
    for i, p in enumerate(prompt_ids):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    b, L = len(prompt_ids), max(lengths)
    input_ids = torch.full((b, L), pad_id, dtype=torch.long)  # [B, L]
    attention_mask = torch.zeros((b, L), dtype=torch.long)  # [B, L]
    completion_mask = torch.zeros((b, L), dtype=torch.long)  # [B, L]
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        start = L - lengths[i]
        input_ids[i, start:] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, start:] = 1
        if len(c):
            completion_mask[i, L - len(c):] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "completion_mask": completion_mask,
        "n_completion": max(len(c) for c in completion_ids),
    }


def nucleus_mask(logp: Tensor, top_p: float, keep: Tensor | None = None) -> Tensor:
    """bool [..., V]: the top-p nucleus of each row of log-probabilities `logp` [..., V].

    Sort ascending, drop tokens whose cumulative probability is <= 1 - top_p, always keep
    the most likely token (HF TopPLogitsWarper / vLLM rule); `keep` [...] long adds one
    token per row (the sampled one). top_p >= 1 keeps everything.
    """
    if top_p >= 1.0:
        return torch.ones_like(logp, dtype=torch.bool)
    sorted_lp, idx = torch.sort(logp.detach(), dim=-1, descending=False)
    cum = sorted_lp.exp().cumsum(dim=-1)
    drop_sorted = cum <= (1.0 - top_p)
    drop_sorted[..., -1] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
    mask = ~drop
    if keep is not None:
        mask = mask.scatter(-1, keep.long()[..., None], True)
    return mask


def restrict(logp: Tensor, mask: Tensor) -> Tensor:
    """log-probabilities renormalised over `mask` (-inf outside): logp - logsumexp(logp[mask])."""
    masked = logp.masked_fill(~mask, -torch.inf)
    return masked - torch.logsumexp(masked, dim=-1, keepdim=True)


def token_logprobs(
    model: torch.nn.Module,
    batch: dict[str, Tensor | int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """log π(y_t | x, y_<t) of every completion token of a `build_batch` batch.

    π is softmax(logits / temperature) over the top-p nucleus (module doc), in float32.
    Returns
      logp     [B, T] float32  completion token t of row i at column t (left-aligned);
                               0.0 on padding; differentiable if grad is enabled
      mask     [B, T] float32  1 where column t is a real completion token
      entropy  [B, T] float32  H(π(· | x, y_<t)) (detached; 0.0 on padding), or None
    The forward pass uses the batch's attention_mask and explicit position_ids.
    """
    if temperature <= 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    input_ids: Tensor = batch["input_ids"]  # [B, L]
    comp_mask: Tensor = batch["completion_mask"]  # [B, L]
    T = int(batch["n_completion"])
    B, L = input_ids.shape
    device = next(model.parameters()).device
    n_comp = comp_mask.sum(dim=1).to(device)  # [B]
    if T == 0:
        z = torch.zeros((B, 0), dtype=torch.float32, device=device)
        return z, z.clone(), (z.clone() if with_entropy else None)

    out = model(
        input_ids=input_ids.to(device),
        attention_mask=batch["attention_mask"].to(device),
        position_ids=batch["position_ids"].to(device),
        logits_to_keep=T + 1,
        use_cache=False,
    )
    logits = out.logits  # [B, T+1, V]: window index w <-> absolute position L - T - 1 + w
    if logits.shape[1] != T + 1:
        raise ValueError(f"model returned {logits.shape[1]} logit positions, expected {T + 1}")

    # Completion token t of row i sits at absolute L - n_i + t and is predicted by the
    # logits at absolute L - n_i + t - 1 = window index T - n_i + t. Invalid columns
    # (t >= n_i) point at window T (the last real token) and are masked below.
    cols = torch.arange(T, device=device)  # [T]
    mask = cols[None, :] < n_comp[:, None]  # [B, T] bool
    win_idx = torch.where(mask, T - n_comp[:, None] + cols[None, :], torch.full_like(mask, T, dtype=torch.long))
    tok_pos = torch.where(mask, L - n_comp[:, None] + cols[None, :], torch.full_like(mask, L - 1, dtype=torch.long))
    targets = torch.gather(input_ids.to(device), 1, tok_pos)  # [B, T]

    V = logits.shape[-1]
    rows_per_chunk = max(1, LOGSOFTMAX_CHUNK_ELEMS // max(1, T * V))
    logp_parts, ent_parts = [], []
    for s in range(0, B, rows_per_chunk):
        e = min(B, s + rows_per_chunk)
        sel = torch.gather(
            logits[s:e], 1, win_idx[s:e, :, None].expand(-1, -1, V)
        )  # [b, T, V]
        logsm = torch.log_softmax(sel.float() / temperature, dim=-1)  # [b, T, V]
        if top_p < 1.0:
            logsm = restrict(logsm, nucleus_mask(logsm, top_p, targets[s:e]))  # [b, T, V], -inf outside
        logp_parts.append(torch.gather(logsm, 2, targets[s:e, :, None]).squeeze(2))  # [b, T]
        if with_entropy:
            with torch.no_grad():
                p = logsm.exp()  # [b, T, V]; p log p := 0 where p = 0 (logits -inf)
                ent_parts.append(-torch.where(p > 0, p * logsm, 0.0).sum(dim=-1))  # [b, T]
    zero = torch.zeros((), dtype=torch.float32, device=device)
    logp = torch.where(mask, torch.cat(logp_parts, dim=0), zero)  # [B, T]
    entropy = torch.where(mask, torch.cat(ent_parts, dim=0), zero) if with_entropy else None
    return logp, mask.float(), entropy


def pad_right(
    seqs: Sequence[np.ndarray | list | Tensor], T: int, value: float | int, *, dtype: torch.dtype | None = None
) -> Tensor:
    """Stack ragged 1-D sequences into [B, T], left-aligned, `value` after each row.

    dtype: float32 if `value` is a float, int64 if it is an int, unless given.
    A sequence longer than T is an error (never truncated silently).
    """
    if dtype is None:
        dtype = torch.long if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else torch.float32
    out = torch.full((len(seqs), T), value, dtype=dtype)  # [B, T]
    for i, s in enumerate(seqs):
        t = torch.as_tensor(np.asarray(s) if not isinstance(s, Tensor) else s).reshape(-1)
        if t.numel() > T:
            raise ValueError(f"sequence {i} has length {t.numel()} > T = {T}")
        out[i, : t.numel()] = t.to(dtype)
    return out
