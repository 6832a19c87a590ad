"""Supervised warm start of any Hugging Face causal-LM folder on (prompt, solution) rows.

What it does: `warm_start(src, out, rows)` loads the folder (fp32 master weights), renders
each prompt in the run's format (protocol/prompts.py, e.g. the chat template), appends
the solution and the tokenizer's eos, and minimises the completion-only token NLL

    L = Σ_{i,t} m_it (-log π(y_it | x_i, y_i<t)) / Σ_{i,t} m_it        (m = 1 on solution + eos)

with AdamW (linear warm-up, then constant) on shuffled batches, left-padded with the
shared padding rule (protocol/tokens.py) and explicit position ids. It saves the result
in the source folder's dtype with its tokenizer, chat template and generation config,
so the folder is used as it would be downloaded.

What it does NOT do: evaluate (`scca run` measures held-out accuracy), train on anything
but the solution tokens, or build the tiny default model (learner/bootstrap.py does).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner.bootstrap import IGNORE, completion_nll_sum, left_pad_positions
from protocol.prompts import PromptRenderer
from protocol.tokens import pad_id
from protocol.weights import folder_dtype, save_model


def encode_pairs(renderer: PromptRenderer, tokenizer, prompts: list[str], solutions: list[str]) -> dict:
    """Left-padded [B, L] input_ids / attention_mask / position_ids / labels (IGNORE off the solution)."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    seqs, labels = [], []
    for p_ids, sol in zip(renderer.encode_many(prompts), solutions):
        c_ids = tokenizer(sol, add_special_tokens=False)["input_ids"] + eos
        seqs.append(p_ids + c_ids)
        labels.append([IGNORE] * len(p_ids) + c_ids)
    L, pad = max(len(s) for s in seqs), pad_id(tokenizer)
    ids = torch.tensor([[pad] * (L - len(s)) + s for s in seqs], dtype=torch.long)
    mask = torch.tensor([[0] * (L - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
    lab = torch.tensor([[IGNORE] * (L - len(s)) + y for s, y in zip(seqs, labels)], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": left_pad_positions(mask), "labels": lab}


def warm_start(src: str | Path, out: str | Path, rows: list[tuple[str, str]], *, prompt_format: str = "chat",
               system_prompt: str = "", steps: int = 200, batch_size: int = 32, lr: float = 2e-3,
               warmup_steps: int = 20, weight_decay: float = 0.01, grad_clip: float = 1.0, seed: int = 0,
               threads: int = 2, log=print) -> dict:
    """SFT `src` on (prompt, solution) rows for `steps` steps; write the folder `out`; return stats."""
    src, out = Path(src), Path(out)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.train()
    renderer = PromptRenderer(tokenizer, prompt_format, system_prompt, folder=str(src))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
    rng, order, losses, t0 = random.Random(f"warm_start:{seed}"), [], [], time.perf_counter()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += rng.sample(range(len(rows)), len(rows))
        batch, order = [rows[i] for i in order[:batch_size]], order[batch_size:]
        enc = encode_pairs(renderer, tokenizer, [p for p, _ in batch], [s for _, s in batch])
        nll, n_tok = completion_nll_sum(model, enc)
        opt.zero_grad(set_to_none=True)
        (nll / max(1, n_tok)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(float(nll.detach()) / max(1, n_tok))
        if step % 50 == 0 or step == steps:
            log(f"warm start step {step}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    dtype = folder_dtype(src)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model.eval(), out, dtype)
    tokenizer.save_pretrained(out)
    info = {"source": str(src), "steps": steps, "batch_size": batch_size, "lr": lr, "prompt_format": prompt_format,
            "system_prompt": system_prompt,  # `scca doctor` warns when a run asks in another format
            "final_loss": sum(losses[-20:]) / len(losses[-20:]), "seconds": time.perf_counter() - t0,
            "dtype": str(dtype).removeprefix("torch."), "rows": len(rows)}
    (out / "warm_start.json").write_text(json.dumps(info, indent=2))
    return info
