"""`scca bootstrap`: build the tiny default model and warm-start it by supervised fine-tuning.

What it does: trains a fresh `build_tiny_model(seed)` on (prompt -> solution + <eos>)
examples until its greedy held-out accuracy lies in a window where RL groups hold both
right and wrong answers (DESIGN §6, "Calibration for the bootstrap"), then writes the HF
folder and `bootstrap.json`. A share `reference_fraction` of each batch (default 20%)
sees the problem's own correct solution in its context (`REFERENCE_TEMPLATE`, the
teacher's template), so the model learns to condition on a reference, which the SCCA
self-teacher relies on.

What it does NOT do: import `verifiers` (the task rows and the scorer are injected by the
caller, e.g. `deploy/`), run RL, or use a GPU. Rows must look like
`{"prompt": str, "meta": {"solution": str, ...}}`.

Loss (one optimizer step over a batch of B examples, plain and reference sub-batches
run as separate forward passes because their lengths differ ~2x):
    L = sum_{i,t} m_it * (-log pi(y_it | x_i, y_i<t)) / sum_{i,t} m_it
with m_it = 1 on completion tokens (solution characters and the final <eos>) only.
Left padding: position_ids = clamp(cumsum(attention_mask) - 1, 0), so padded and
unpadded sequences see identical positions.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from learner.model import EOS_ID, build_tiny_model, build_tokenizer, save_model_folder
from protocol.credit_methods import REFERENCE_TEMPLATE  # the teacher's template, defined once
IGNORE = -100  # label of tokens that carry no loss (prompt, padding)
EVAL_MARGIN_TOKENS = 8  # generation budget past the longest solution (+ <eos>)
DEFAULT_MAX_NEW_TOKENS = 64
NOT_IN_WINDOW = "bootstrap never reached the target window"
# AdamW learning rate of the warm start. 3e-3 reached the window at step ~600 on one
# machine and never within 2,000 steps on another (7% at step 2,000: the float rounding of
# another CPU's kernels sent it down a slower path). With 1e-3 on that machine: seed 0
# reached the window at step 550 (24.6% greedy on all 500 held-out problems, the same step
# with 1 or 2 torch threads), seed 1 at step 1,100; both with a steady loss descent instead
# of a plateau, well inside max_steps.
BOOTSTRAP_LR = 1e-3


def left_pad_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids[b, t] = max(0, sum_{s<=t} mask[b, s] - 1); [B, T] long."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def encode_examples(tokenizer, prompts: list[str], completions: list[str]) -> dict:
    """Left-padded batch of `<bos> prompt completion <eos>` with completion-only labels.

    Returns input_ids, attention_mask, position_ids, labels: each [B, T] long, where
    labels[b, t] is the token at t where it is a completion token, else IGNORE.
    """
    seqs, labs = [], []
    for p, c in zip(prompts, completions):
        p_ids = tokenizer(p)["input_ids"]  # starts with <bos>
        c_ids = tokenizer(c, add_special_tokens=False)["input_ids"] + [EOS_ID]
        seqs.append(p_ids + c_ids)
        labs.append([IGNORE] * len(p_ids) + c_ids)
    T = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (T - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    labels = torch.tensor([[IGNORE] * (T - len(s)) + l for s, l in zip(seqs, labs)])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": left_pad_positions(mask),
        "labels": labels,
    }


def completion_nll_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(sum over completion tokens of -log pi(y_t | y_<t), number of those tokens)."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits  # [B, T, V]
    targets = batch["labels"][:, 1:]  # [B, T-1]: token t+1 is predicted at t
    nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return nll, int((targets != IGNORE).sum())


def with_reference(rows: list[dict], template: str = REFERENCE_TEMPLATE) -> list[dict]:
    """Copies of rows whose prompt carries the row's own correct solution as reference."""
    return [
        {**r, "prompt": template.format(c=r["meta"]["solution"], prompt=r["prompt"])}
        for r in rows
    ]


@torch.no_grad()
def generate_greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions (new tokens only, decoded without special tokens, cut at <eos>)."""
    enc = tokenizer(prompts, padding=True, return_tensors="pt")  # left padded
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # [B, T + new]
    texts = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        if EOS_ID in row:
            row = row[: row.index(EOS_ID)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts


@torch.no_grad()
def evaluate_greedy(
    model,
    tokenizer,
    rows: list[dict],
    score_fn: Callable[[str, dict, str], dict],
    batch_size: int = 128,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> float:
    """Fraction of rows whose greedy completion gets reward 1 from score_fn."""
    return _evaluate(model, tokenizer, rows, score_fn, batch_size, max_new_tokens)[0]


def _evaluate(model, tokenizer, rows, score_fn, batch_size, max_new_tokens):
    """(accuracy, greedy completions) of rows; model left in its previous train/eval mode."""
    if not rows:
        raise ValueError("evaluate_greedy needs at least one row")
    was_training = model.training
    model.eval()
    correct, texts = 0, []
    try:
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            out = generate_greedy(model, tokenizer, [r["prompt"] for r in chunk], max_new_tokens)
            correct += sum(
                score_fn(r["prompt"], r["meta"], t)["reward"] >= 1.0 for r, t in zip(chunk, out)
            )
            texts.extend(out)
    finally:
        model.train(was_training)
    return correct / len(rows), texts


def _batches(n_rows: int, batch_size: int, rng: random.Random):
    """Endless stream of index lists: shuffled epochs, deterministic for the rng."""
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            perm = list(range(n_rows))
            rng.shuffle(perm)
            order.extend(perm)
        yield order[:batch_size]
        del order[:batch_size]


def _sft_step(model, tokenizer, opt, sched, ref_rows: list[dict], plain_rows: list[dict], template: str,
              grad_clip: float) -> float:
    """One optimizer step of the module-doc loss over a plain and a reference sub-batch; its mean NLL."""
    sub_batches = []
    if plain_rows:
        sub_batches.append(encode_examples(
            tokenizer, [r["prompt"] for r in plain_rows], [r["meta"]["solution"] for r in plain_rows]))
    if ref_rows:
        sub_batches.append(encode_examples(
            tokenizer, [r["prompt"] for r in with_reference(ref_rows, template)],
            [r["meta"]["solution"] for r in ref_rows]))
    n_tok = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in sub_batches)
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for b in sub_batches:
        nll, _ = completion_nll_sum(model, b)
        (nll / n_tok).backward()
        total += float(nll.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    sched.step()
    return total / n_tok


class _Window:
    """The stop rule of `bootstrap` (its docstring): which evaluation's weights are kept."""

    def __init__(self, low: float, high: float, prefer_low: float, reference_target: float):
        self.low, self.high, self.stop_at = low, high, max(low, prefer_low)
        self.reference_target = reference_target
        self.fallback: dict | None = None  # {"step", "acc", "ref_acc", "state"} of the last in-window eval
        self.chosen: dict | None = None

    def observe(self, step: int, acc: float, ref_acc: float | None, model) -> bool:
        """Fold in one evaluation; True when training should stop."""
        ref_ok = self.reference_target <= 0 or (ref_acc is not None and ref_acc >= self.reference_target)
        if self.stop_at <= acc <= self.high and ref_ok:
            self.chosen = {"step": step, "acc": acc, "ref_acc": ref_acc}
            return True
        if self.low <= acc <= self.high and ref_ok:
            self.fallback = {"step": step, "acc": acc, "ref_acc": ref_acc,
                             "state": copy.deepcopy(model.state_dict())}
        return acc > self.high  # overshot: use the fallback if there is one


def bootstrap(
    out_dir: Path,
    train_rows: list[dict],
    heldout_rows: list[dict],
    score_fn: Callable[[str, dict, str], dict],
    seed: int = 0,
    target_low: float = 0.10,
    target_high: float = 0.40,
    max_steps: int = 2000,
    eval_every: int = 50,
    log: Callable[[str], None] = print,
    *,
    prefer_low: float = 0.15,
    eval_rows: int = 200,
    batch_size: int = 64,
    reference_fraction: float = 0.2,
    reference_target: float = 0.0,
    reference_template: str = REFERENCE_TEMPLATE,
    lr: float = BOOTSTRAP_LR,
    warmup_steps: int = 50,
    betas: tuple[float, float] = (0.9, 0.98),
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    num_threads: int = 2,
) -> dict:
    """SFT a fresh tiny model until greedy held-out accuracy is in the target window.

    Every `eval_every` steps, greedy accuracy on the first `eval_rows` held-out rows is
    measured (and, with reference_target > 0, the greedy accuracy on the same rows with
    their correct solution in context: the self-teacher's bar). Training stops at the
    first evaluation in [max(target_low, prefer_low), target_high] whose reference
    accuracy is >= reference_target. An evaluation in [target_low, target_high] below
    that (reference bar met) is kept as a fallback snapshot, used if training overshoots
    target_high or reaches max_steps. The chosen weights are then scored on all of
    `heldout_rows` (reported, not gated). Raises RuntimeError (NOT_IN_WINDOW) if no
    evaluation ever met the rule. Learning rate: linear warm-up over `warmup_steps`,
    then constant.
    """
    if not train_rows or not heldout_rows:
        raise ValueError("bootstrap needs train_rows and heldout_rows")
    if not 0.0 <= target_low <= target_high <= 1.0:
        raise ValueError(f"bad window [{target_low}, {target_high}]")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        tokenizer = build_tokenizer()
        model = build_tiny_model(seed)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
        stream = _batches(len(train_rows), batch_size, random.Random(f"bootstrap:{seed}"))
        n_ref = round(batch_size * reference_fraction)
        eval_set = heldout_rows[:eval_rows]
        max_new = max(len(r["meta"]["solution"]) for r in heldout_rows) + 1 + EVAL_MARGIN_TOKENS
        window = _Window(target_low, target_high, prefer_low, reference_target)
        history: list[dict] = []
        loss_window: list[float] = []
        step = 0
        while step < max_steps:
            idx = next(stream)
            loss_window.append(_sft_step(model, tokenizer, opt, sched, [train_rows[i] for i in idx[:n_ref]],
                                         [train_rows[i] for i in idx[n_ref:]], reference_template, grad_clip))
            step += 1
            if step % eval_every == 0 or step == max_steps:
                h = _log_eval(model, tokenizer, eval_set, score_fn, max_new, step, loss_window, reference_target,
                              reference_template, t0, log)
                history.append(h)
                loss_window = []
                if window.observe(step, h["eval_accuracy"], h.get("eval_reference_accuracy"), model):
                    break
        chosen = _chosen(window, model, history, step, max_steps, target_low, target_high, log)
        full_acc = evaluate_greedy(model, tokenizer, heldout_rows, score_fn, max_new_tokens=max_new)
        wall = time.perf_counter() - t0
        log(f"bootstrap: step {chosen['step']}, held-out greedy accuracy {full_acc:.3f} "
            f"on {len(heldout_rows)} problems, {wall:.0f}s")
        save_model_folder(model, tokenizer, Path(out_dir))
        result = {
            "seed": seed, "steps": chosen["step"], "steps_trained": step, "heldout_accuracy": full_acc,
            "heldout_n": len(heldout_rows), "eval_accuracy_at_stop": chosen["acc"],
            "eval_reference_accuracy_at_stop": chosen.get("ref_acc"), "eval_n": len(eval_set),
            "wall_seconds": wall, "train_rows": len(train_rows),
            "n_parameters": sum(p.numel() for p in model.parameters()), "history": history,
            "config": {
                "lr": lr, "warmup_steps": warmup_steps, "schedule": "linear warm-up, constant",
                "betas": list(betas), "weight_decay": weight_decay, "grad_clip": grad_clip,
                "batch_size": batch_size, "reference_fraction": reference_fraction, "reference_per_batch": n_ref,
                "reference_template": reference_template, "reference_target": reference_target,
                "target_low": target_low, "target_high": target_high, "prefer_low": prefer_low,
                "max_steps": max_steps, "eval_every": eval_every, "eval_rows": eval_rows,
                "max_new_tokens": max_new, "num_threads": num_threads, "model": model.config.to_diff_dict(),
            },
        }
        (Path(out_dir) / "bootstrap.json").write_text(json.dumps(result, indent=2, sort_keys=True))
        return result
    finally:
        torch.set_num_threads(old_threads)


def _log_eval(model, tokenizer, eval_set, score_fn, max_new, step, loss_window, reference_target, template, t0,
              log) -> dict:
    """One bootstrap evaluation (plain, and with a reference when the stop rule needs it), logged."""
    acc, texts = _evaluate(model, tokenizer, eval_set, score_fn, 128, max_new)
    h = {"step": step, "eval_accuracy": acc, "train_loss": sum(loss_window) / len(loss_window),
         "seconds": time.perf_counter() - t0}
    ref_txt = ""
    if reference_target > 0:
        h["eval_reference_accuracy"] = _evaluate(model, tokenizer, with_reference(eval_set, template), score_fn,
                                                 128, max_new)[0]
        ref_txt = f", with a reference {h['eval_reference_accuracy']:.3f}"
    log(f"bootstrap step {step}: loss {h['train_loss']:.4f}, held-out greedy accuracy "
        f"{acc:.3f}{ref_txt} on {len(eval_set)} ({time.perf_counter() - t0:.0f}s); "
        f"e.g. {eval_set[0]['prompt']!r} -> {texts[0]!r}")
    return h


def _chosen(window: _Window, model, history, step, max_steps, target_low, target_high, log) -> dict:
    """The evaluation whose weights the model keeps (loads the fallback's), or NOT_IN_WINDOW."""
    if window.chosen is not None:
        return window.chosen
    if window.fallback is None:
        raise RuntimeError(
            f"{NOT_IN_WINDOW} [{target_low}, {target_high}] within {step} steps "
            f"(max_steps {max_steps}); evaluations: "
            + ", ".join(f"{h['step']}:{h['eval_accuracy']:.3f}" for h in history)
        )
    model.load_state_dict(window.fallback["state"])
    log(f"bootstrap: using the in-window weights of step {window.fallback['step']}")
    return {k: v for k, v in window.fallback.items() if k != "state"}
