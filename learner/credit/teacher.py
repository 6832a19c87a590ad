"""The SCCA teacher pass (DESIGN §6 steps 2–3): the model scored with and without a reference.

What it does:
  * `teacher_scores` runs, under no_grad and in eval mode (the mode is restored after),
    two forwards per sample that has a context c: the plain prompt x and the conditioned
    prompt ctx(x, c) = template.format(c=c, prompt=x), each followed by the sample's own
    completion y. Per completion token t it returns
        kl_t       = KL(p_t || q_t) = Σ_v p_t(v) (log p_t(v) - log q_t(v))
        logp_plain = log p_t(y_t),   logq = log q_t(y_t)
    with p_t = π(·|x, y_<t), q_t = π(·|ctx(x, c), y_<t), softmax(logits / temperature)
    at the actors' sampling temperature. With top_p < 1 both distributions are restricted
    to p_t's top-p nucleus S_t (plus the sampled token) and renormalised there,
        KL_t = Σ_{v∈S_t} p_S(v) (log p_S(v) - log q_S(v)),
    the part of the vocabulary the actor could have drawn from; restricting q to its own
    nucleus instead would make the KL infinite wherever the two nuclei differ.
    Optionally the same against a second ("wrong") context for `sc_contrast`, sharing the
    plain forward.
  * Rows are sorted by length and cut into micro-batches; sequences are left-padded with
    explicit position ids (`learner.logprobs.build_batch`: cumsum(attention) - 1), so a
    row's scores do not depend on the batch it sits in.
  * `token_kl` is the vocabulary part on logits rows [N, V]:
      - V <= vocab_chunk: direct log_softmax;
      - else: the log-normalisers and the KL sum are accumulated over vocabulary chunks
        of `vocab_chunk` columns (float32), never materialising [N, V] log-probabilities;
      - V > topk_vocab_threshold: top-K of p plus one tail bucket,
            KL ≈ Σ_{v∈K} p(v) log(p(v)/q(v)) + P_tail log(P_tail / Q_tail),
        P_tail = 1 - Σ_K p, Q_tail = 1 - Σ_K q (clamped at TAIL_EPS); K = the K most
        likely tokens under p. This is the KL of the coarse-grained distributions, hence a
        lower bound of the full KL (log-sum inequality), exact when the tail is empty.

What it does NOT do: pick the contexts (`contexts.py`), turn scores into weights
(`variants.py`, `cuts.py`), or take gradients. Rows whose context is None (or whose
completion is empty) get zeros and has_teacher False (empty completions: True but all
masked). Output layout is the trainer's: [B, T] left-aligned, T = longest completion.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from learner.logprobs import build_batch, nucleus_mask, restrict
from protocol.credit_methods import REFERENCE_TEMPLATE
from protocol.tokens import pad_id

DEFAULT_TEMPLATE = REFERENCE_TEMPLATE  # "Reference solution:\n{c}\n\n{prompt}", as in the SFT bootstrap
NUCLEUS_CHUNK_ELEMS = 1 << 24  # rows * V float32 elements per chunk of the top-p path
VOCAB_CHUNK = 32_768  # vocabulary columns per chunk in token_kl
TOPK_VOCAB_THRESHOLD = 262_144  # V above this: top-K + tail bucket instead of the full sum
DEFAULT_TOPK = 1024  # K of the top-K approximation
TAIL_EPS = 1e-12  # floor of the tail bucket masses


def _chunked_lse(logits: Tensor, temperature: float, chunk: int) -> Tensor:
    """logsumexp_v(logits[:, v] / temperature) in float32, over vocabulary chunks. [N, V] -> [N]."""
    m = torch.full(logits.shape[:1], -torch.inf, dtype=torch.float32, device=logits.device)  # [N]
    acc = torch.zeros_like(m)  # Σ exp(a - m)
    for lo in range(0, logits.shape[1], chunk):
        a = logits[:, lo:lo + chunk].float() / temperature  # [N, c]
        m_new = torch.maximum(m, a.max(dim=1).values)
        acc = acc * torch.exp(m - m_new).nan_to_num(0.0) + torch.exp(a - m_new[:, None]).sum(dim=1)
        m = m_new
    return m + torch.log(acc)


def token_kl(
    logits_p: Tensor,
    logits_q: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    vocab_chunk: int = VOCAB_CHUNK,
    topk: int | None = None,
    topk_vocab_threshold: int = TOPK_VOCAB_THRESHOLD,
    top_p: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(KL(p||q) [N], log p(y) [N], log q(y) [N]) in float32 from logits rows [N, V] and targets [N].

    Path chosen by V: direct (V <= vocab_chunk), chunked over the vocabulary, or top-K
    plus tail (V > topk_vocab_threshold; K = topk or DEFAULT_TOPK); top_p < 1: both
    restricted to p's nucleus, in row chunks (`_nucleus_kl`). See the module doc.
    """
    if logits_p.shape != logits_q.shape or logits_p.dim() != 2 or targets.shape != logits_p.shape[:1]:
        raise ValueError(f"need logits [N, V] twice and targets [N]; got {tuple(logits_p.shape)}, "
                         f"{tuple(logits_q.shape)}, {tuple(targets.shape)}")
    if temperature <= 0 or vocab_chunk < 1 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature > 0, vocab_chunk >= 1, 0 < top_p <= 1; got {temperature}, "
                         f"{vocab_chunk}, {top_p}")
    N, V = logits_p.shape
    tgt = targets.long()[:, None]  # [N, 1]
    if top_p < 1.0:
        return _nucleus_kl(logits_p, logits_q, targets.long(), temperature, top_p)
    if V <= vocab_chunk and V <= topk_vocab_threshold:
        lp = torch.log_softmax(logits_p.float() / temperature, dim=-1)  # [N, V]
        lq = torch.log_softmax(logits_q.float() / temperature, dim=-1)
        kl = torch.where(lp > -torch.inf, lp.exp() * (lp - lq), 0.0).sum(dim=-1)
        return kl, lp.gather(1, tgt).squeeze(1), lq.gather(1, tgt).squeeze(1)
    lse_p = _chunked_lse(logits_p, temperature, vocab_chunk)  # [N]
    lse_q = _chunked_lse(logits_q, temperature, vocab_chunk)
    logp_y = logits_p.gather(1, tgt).squeeze(1).float() / temperature - lse_p  # [N]
    logq_y = logits_q.gather(1, tgt).squeeze(1).float() / temperature - lse_q
    if V > topk_vocab_threshold:
        k = min(V, topk or DEFAULT_TOPK)
        idx = logits_p.topk(k, dim=1).indices  # [N, K]
        lpk = logits_p.gather(1, idx).float() / temperature - lse_p[:, None]  # [N, K]
        lqk = logits_q.gather(1, idx).float() / temperature - lse_q[:, None]
        pk = lpk.exp()
        kl = torch.where(lpk > -torch.inf, pk * (lpk - lqk), 0.0).sum(dim=1)
        p_tail = (1.0 - pk.sum(dim=1)).clamp(min=TAIL_EPS)  # [N]
        q_tail = (1.0 - lqk.exp().sum(dim=1)).clamp(min=TAIL_EPS)
        return kl + p_tail * (p_tail.log() - q_tail.log()), logp_y, logq_y
    kl = torch.zeros(N, dtype=torch.float32, device=logits_p.device)
    for lo in range(0, V, vocab_chunk):
        lp = logits_p[:, lo:lo + vocab_chunk].float() / temperature - lse_p[:, None]  # [N, c]
        lq = logits_q[:, lo:lo + vocab_chunk].float() / temperature - lse_q[:, None]
        kl += torch.where(lp > -torch.inf, lp.exp() * (lp - lq), 0.0).sum(dim=1)
    return kl, logp_y, logq_y


def _nucleus_kl(logits_p: Tensor, logits_q: Tensor, targets: Tensor, temperature: float,
                top_p: float) -> tuple[Tensor, Tensor, Tensor]:
    """token_kl with p and q restricted to p's top-p nucleus (plus the target), row chunks of
    NUCLEUS_CHUNK_ELEMS elements so the sort never holds more than that. [N, V] -> 3 x [N]."""
    N, V = logits_p.shape
    rows = max(1, NUCLEUS_CHUNK_ELEMS // max(1, V))
    parts: list[tuple[Tensor, Tensor, Tensor]] = []
    for lo in range(0, N, rows):
        tgt = targets[lo:lo + rows]  # [n]
        lp = torch.log_softmax(logits_p[lo:lo + rows].float() / temperature, dim=-1)  # [n, V]
        keep = nucleus_mask(lp, top_p, tgt)  # [n, V] bool
        lp = restrict(lp, keep)
        lq = restrict(torch.log_softmax(logits_q[lo:lo + rows].float() / temperature, dim=-1), keep)
        kl = torch.where(keep, lp.exp() * (lp - lq), 0.0).sum(dim=-1)  # [n]
        parts.append((kl, lp.gather(1, tgt[:, None]).squeeze(1), lq.gather(1, tgt[:, None]).squeeze(1)))
    return tuple(torch.cat(x) for x in zip(*parts))  # type: ignore[return-value]


def _completion_logits(model: torch.nn.Module, batch: dict) -> tuple[Tensor, Tensor]:
    """Logits predicting each completion token, left-aligned: ([b, T, V], valid [b, T] bool).

    Same window arithmetic as `learner.logprobs.token_logprobs`: completion token t of a
    row with n completion tokens is predicted by window index T - n + t of the last T + 1
    positions.
    """
    device = next(model.parameters()).device
    T = int(batch["n_completion"])
    n = batch["completion_mask"].sum(dim=1).to(device)  # [b]
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device), logits_to_keep=T + 1, use_cache=False)
    logits = out.logits  # [b, T+1, V]
    cols = torch.arange(T, device=device)
    valid = cols[None, :] < n[:, None]  # [b, T]
    win = torch.where(valid, T - n[:, None] + cols[None, :], torch.full_like(valid, T, dtype=torch.long))
    V = logits.shape[-1]
    return logits.gather(1, win[:, :, None].expand(-1, -1, V)), valid


def teacher_scores(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[Sequence[int]],
    contexts: Sequence[str | None],
    *,
    wrong_contexts: Sequence[str | None] | None = None,
    template: str = DEFAULT_TEMPLATE,
    micro_batch: int = 16,
    temperature: float = 1.0,
    top_p: float = 1.0,
    vocab_chunk: int = VOCAB_CHUNK,
    topk: int | None = None,
    topk_vocab_threshold: int = TOPK_VOCAB_THRESHOLD,
    encode: Callable[[str], list[int]] | None = None,
) -> dict[str, Tensor]:
    """Teacher scores of B completions, each under its own context (module doc has the equations).

    prompts[i] is the plain prompt text, encoded as the trainer does: `encode(text)`, the
    run's prompt format (protocol/prompts.py; default raw tokenizer(text)), which also
    renders the conditioned prompt template.format(c=c, prompt=x),
    completions[i] the sampled token ids (incl. a final eos), contexts[i] the reference
    text c or None. Returns float32 tensors on the model's device:
        kl, logp_plain, logq   [B, T]   0 on padding and on rows without a context
        mask                   [B, T]   1 on valid completion tokens (all rows)
        has_teacher            [B] bool contexts[i] is not None
    and, when wrong_contexts is given, kl_wrong [B, T] and has_wrong_teacher [B] for the
    second context (logq_wrong too). T = longest completion.
    """
    B = len(prompts)
    if len(completions) != B or len(contexts) != B or (wrong_contexts is not None and len(wrong_contexts) != B):
        raise ValueError("prompts, completions, contexts (and wrong_contexts) must have equal lengths")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1; got {micro_batch}")
    device = next(model.parameters()).device
    T = max((len(c) for c in completions), default=0)
    passes = {"": list(contexts)}
    if wrong_contexts is not None:
        passes["_wrong"] = list(wrong_contexts)
    zeros = lambda: torch.zeros((B, T), dtype=torch.float32, device=device)  # noqa: E731
    out: dict[str, Tensor] = {"logp_plain": zeros()}
    for sfx, ctxs in passes.items():
        out["kl" + sfx], out["logq" + sfx] = zeros(), zeros()
        out[("has_teacher" if not sfx else "has_wrong_teacher")] = torch.tensor(
            [c is not None for c in ctxs], dtype=torch.bool, device=device)
    lens = torch.tensor([len(c) for c in completions], device=device)
    out["mask"] = (torch.arange(T, device=device)[None, :] < lens[:, None]).float()
    if T == 0:
        return out

    pad = pad_id(tokenizer)
    enc = encode or (lambda text: list(tokenizer(text)["input_ids"]))  # noqa: E731
    plain = [enc(p) for p in prompts]
    cond = {sfx: [enc(template.format(c=c, prompt=p)) if c is not None else None for c, p in zip(ctxs, prompts)]
            for sfx, ctxs in passes.items()}
    rows = [i for i in range(B) if len(completions[i]) and any(cond[s][i] is not None for s in passes)]
    longest = lambda i: max(len(cond[s][i]) for s in passes if cond[s][i] is not None) + len(completions[i])  # noqa: E731
    rows.sort(key=longest, reverse=True)  # similar lengths share a micro-batch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(rows), micro_batch):
                mb = rows[lo:lo + micro_batch]
                comp = [list(completions[i]) for i in mb]
                lp_logits, valid = _completion_logits(model, build_batch([plain[i] for i in mb], comp, pad))
                Tm = valid.shape[1]
                tgt = torch.zeros((len(mb), Tm), dtype=torch.long, device=device)  # [b, Tm]
                for j, c in enumerate(comp):
                    tgt[j, :len(c)] = torch.tensor(c, dtype=torch.long, device=device)
                for sfx in passes:
                    sub = [j for j, i in enumerate(mb) if cond[sfx][i] is not None]
                    if not sub:
                        continue
                    lq_logits, v = _completion_logits(  # [s, Tq, V], [s, Tq]; Tq <= Tm
                        model, build_batch([cond[sfx][mb[j]] for j in sub], [comp[j] for j in sub], pad))
                    sub_t, Tq = torch.tensor(sub, device=device), v.shape[1]
                    kl, lpy, lqy = token_kl(lp_logits[sub_t, :Tq][v], lq_logits[v], tgt[sub_t, :Tq][v],
                                            temperature=temperature, vocab_chunk=vocab_chunk, topk=topk,
                                            topk_vocab_threshold=topk_vocab_threshold, top_p=top_p)  # [N] each
                    r = torch.tensor([mb[j] for j in sub], device=device)[:, None].expand_as(v)[v]  # [N]
                    c_idx = torch.arange(v.shape[1], device=device)[None, :].expand_as(v)[v]  # [N]
                    out["kl" + sfx][r, c_idx] = kl
                    out["logq" + sfx][r, c_idx] = lqy
                    out["logp_plain"][r, c_idx] = lpy
    finally:
        model.train(was_training)
    return out
