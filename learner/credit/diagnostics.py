"""Credit diagnostics (DESIGN §6): do the weights find the first wrong token of a wrong answer?

What it does (all pure functions; w, mask [B, T] left-aligned; first_wrong [B] long token
index of the first wrong token, -1 for a correct sample or an unknown position):
  * `first_wrong_token_index(token_texts, first_wrong_char)`: map a verifier's character
    index (arith's `first_wrong`) to the completion token index.
  * `first_error_mass`: mean over wrong samples of  w_i[e_i] / Σ_t m w_i[t]
    (uniform weights give 1 / n_i).
  * `mass_after_error`: mean over wrong samples of  Σ_{t > e_i} m w_i[t] / Σ_t m w_i[t].
  * `first_error_auroc`: AUROC of w as a score that detects the first-error tokens,
    pooled over the wrong samples: positives = {(i, e_i)}, negatives = every other valid
    token of those samples (upto_error=True: only tokens t < e_i). Rank-based
    (Mann–Whitney U with average ranks for ties): AUROC = (R_pos - n_pos(n_pos+1)/2) /
    (n_pos n_neg); a constant score gives 0.5, a perfect detector 1, an inverted one 0.
  * `credit_diagnostics`: the four numbers above as one metrics dict.
  * `token_pieces(tokenizer, ids)`: the text each sampled token contributes to the
    decoded completion, from the tokenizer's own offsets (incremental detokenisation),
    so a verifier's character index maps to the right token for any tokenizer: a BPE
    token covering several characters, a character split over several byte tokens, a
    special token that decodes to "" (see `first_wrong_token_index`).
  * `weight_stats(w, mask, adv)`: what the weights do to the step, logged every step:
    max w, std w and Σ w² / n over valid tokens (how concentrated the credit is), and
    the negative side: the share of the wrong samples' uniform token weight the credit
    keeps (1 under GRPO; O/T/R cut it) and the total negative token advantage
    Σ_{Â<0} Â / n that the token-mean loss sees.
A wrong sample counts only if 0 <= e_i < n_i (its error token exists among the valid
tokens); if none does, the functions return NaN.

What it does NOT do: score answers (the verifier gives `first_wrong`), compute weights,
or log. Token vs character: never assumed equal. Special tokens decode to ""
(skip_special_tokens), and the completion ids end with <eos> when the model stopped; a
completion that stops too early has its first wrong "character" at len(text), i.e. the
<eos> token. `first_wrong_token_index` handles both.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def first_wrong_token_index(token_texts: Sequence[str], first_wrong_char: int | None) -> int:
    """Token index holding character `first_wrong_char` of the decoded completion, or -1.

    token_texts[t] = the text token t contributes to the decoded completion (e.g.
    tokenizer.decode([id], skip_special_tokens=True); "" for <eos> and other specials).
    Returns the first token whose text span [start, end) contains the character; if the
    character lies at or past the end of the text (a completion that stopped early),
    the first token starting there (the <eos>); an empty-text (special) token sitting
    exactly at the character's position counts as the wrong token. -1 if there is no such
    token (None input, or a completion cut at the length limit).
    """
    if first_wrong_char is None or first_wrong_char < 0:
        return -1
    pos = 0
    for t, piece in enumerate(token_texts):
        end = pos + len(piece)
        if end > first_wrong_char or (pos >= first_wrong_char and not piece):
            return t
        pos = end
    return -1


def _wrong_rows(w: Tensor, mask: Tensor, first_wrong: Tensor):
    """(w [B, T] float64, valid [B, T] bool, e [B] long, rows [R] long) of the countable samples."""
    if w.shape != mask.shape or w.dim() != 2 or first_wrong.shape != w.shape[:1]:
        raise ValueError(f"need w, mask [B, T] and first_wrong [B]; got {tuple(w.shape)}, "
                         f"{tuple(mask.shape)}, {tuple(first_wrong.shape)}")
    valid = mask > 0
    e = first_wrong.long().to(w.device)
    n = valid.sum(dim=1)
    rows = torch.nonzero((e >= 0) & (e < n)).squeeze(1)
    return w.detach().double() * valid, valid, e, rows


def first_error_mass(w: Tensor, mask: Tensor, first_wrong: Tensor) -> float:
    """Mean over wrong samples of the share of the sequence's weight on its first wrong token."""
    wd, _, e, rows = _wrong_rows(w, mask, first_wrong)
    if rows.numel() == 0:
        return math.nan
    tot = wd[rows].sum(dim=1).clamp(min=1e-300)  # [R]
    return float((wd[rows, e[rows]] / tot).mean())


def mass_after_error(w: Tensor, mask: Tensor, first_wrong: Tensor) -> float:
    """Mean over wrong samples of the share of the sequence's weight strictly after its first wrong token."""
    wd, _, e, rows = _wrong_rows(w, mask, first_wrong)
    if rows.numel() == 0:
        return math.nan
    cols = torch.arange(wd.shape[1], device=wd.device)
    after = (wd[rows] * (cols[None, :] > e[rows, None])).sum(dim=1)  # [R]
    return float((after / wd[rows].sum(dim=1).clamp(min=1e-300)).mean())


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Rank-based AUROC = P(score_pos > score_neg) + 0.5 P(equal); NaN if a side is empty."""
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    scores = np.concatenate([pos, neg]).astype(np.float64)
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last element of each tie group (1-based)
    avg_rank = upper - (counts - 1) / 2.0  # average 1-based rank of each tie group
    r_pos = avg_rank[inv[:n_pos]].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def first_error_auroc(w: Tensor, mask: Tensor, first_wrong: Tensor, upto_error: bool = False) -> float:
    """Pooled AUROC of w for the first-error tokens among all valid tokens of the wrong samples
    (upto_error: among tokens up to and including the error). See the module doc."""
    wd, valid, e, rows = _wrong_rows(w, mask, first_wrong)
    if rows.numel() == 0:
        return math.nan
    cols = torch.arange(wd.shape[1], device=wd.device)[None, :]
    er = e[rows, None]  # [R, 1]
    is_pos = cols == er  # [R, T]
    neg_sel = valid[rows] & ~is_pos & ((cols < er) if upto_error else True)
    pos = wd[rows][is_pos].cpu().numpy()
    neg = wd[rows][neg_sel].cpu().numpy()
    return auroc(pos, neg)


def credit_diagnostics(w: Tensor, mask: Tensor, first_wrong: Tensor, prefix: str = "credit/") -> dict[str, float]:
    """The four first-error diagnostics of one batch, keyed for the metrics row."""
    return {
        prefix + "first_error_mass": first_error_mass(w, mask, first_wrong),
        prefix + "mass_after_error": mass_after_error(w, mask, first_wrong),
        prefix + "first_error_auroc": first_error_auroc(w, mask, first_wrong, upto_error=False),
        prefix + "first_error_auroc_upto": first_error_auroc(w, mask, first_wrong, upto_error=True),
    }


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def token_pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """pieces[t] = text[start_t:end_t] of token t in text = decode(ids, skip_special_tokens=True).

    Fast path: every token decoded alone, when those pieces concatenate to the text (true
    of character and most byte-fallback-free tokenizers). Otherwise the offsets of
    incremental detokenisation: end_t = length of the common prefix of the text and
    decode(ids[:t+1]) (a token that completes a multi-byte character gets it; one that
    leaves it incomplete, whose prefix decode ends in U+FFFD, gets ""), start_t = end_{t-1}.
    `first_wrong_token_index` then maps a wrong character split over byte tokens to its
    first byte token: the token where the model's wrong choice began.
    """
    ids = [int(i) for i in ids]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    pieces = [tokenizer.decode([i], skip_special_tokens=True) for i in ids]
    if "".join(pieces) == text:
        return pieces
    out, start = [], 0
    for t in range(len(ids)):
        end = max(start, _common_prefix(text, tokenizer.decode(ids[: t + 1], skip_special_tokens=True)))
        out.append(text[start:end])
        start = end
    return out


def weight_stats(w: Tensor, mask: Tensor, adv: Tensor, prefix: str = "credit/") -> dict[str, float]:
    """Per-step weight statistics (module doc); w, mask [B, T], adv [B]. NaN where undefined."""
    valid = mask > 0  # [B, T]
    wd = w.detach().double()
    wv = wd[valid]  # [N]
    n = wv.numel()
    neg = valid & (adv < 0).to(valid.device)[:, None]  # [B, T] tokens of wrong samples
    a_tok = adv.double().to(wd.device)[:, None] * wd  # [B, T] Â
    nan = float("nan")
    return {
        prefix + "w_max": float(wv.max()) if n else nan,
        prefix + "w_std": float(wv.std(unbiased=False)) if n else nan,
        prefix + "w_sq_mean": float((wv**2).mean()) if n else nan,
        prefix + "neg_weight_kept": float(wd[neg].sum() / neg.sum()) if bool(neg.any()) else nan,
        prefix + "neg_adv_total": float(a_tok[valid].clamp(max=0.0).sum() / n) if n else nan,
    }
