"""Credit diagnostics on a fixed checkpoint: does each variant find the first error, and at what cost?

For every credit variant, on the same sampled `arith` batch from one checkpoint (default:
the bootstrap model), prints the share of weight mass on the first wrong token, the
AUROC of the weights for finding it (all tokens / up to the error), the mass after the
error, and the teacher pass as a fraction of a full step (sampling + forward/backward),
all measured side by side in this one run. λ = λ_max with the gate off, so the weights
are the variant's own, not the schedule's. The solution bank starts with one verified
solution per prompt, so every wrong sample has a self-teacher context; diagnostics cover
the rows a variant reweights.

    .venv/bin/python bench/credit.py [--model .cache/scca/bootstrap-s0] [--prompts 32] [--group 8]
        [--terms 3 --digits 2 --max-new-tokens 40]
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from actors.engines.hf import HFEngine  # noqa: E402
from learner.credit.step import CreditStep  # noqa: E402
from learner.hub import Group  # noqa: E402
from learner.logprobs import build_batch, token_logprobs  # noqa: E402
from learner.loss import group_advantages  # noqa: E402
from protocol.config import CreditConfig  # noqa: E402
from protocol.credit_methods import CREDIT_METHODS  # noqa: E402
from verifiers.tasks import arith  # noqa: E402

VARIANTS = tuple(CREDIT_METHODS)  # every registered method, round-3 arms included


def sample_groups(engine: HFEngine, rows: list[dict], group: int, max_new: int = 40) -> tuple[list[Group], float]:
    t = time.perf_counter()
    out = engine.generate([r["prompt"] for r in rows], group, temperature=1.0, max_new_tokens=max_new)
    gen_s = time.perf_counter() - t
    groups = []
    for r, samples in zip(rows, out):
        verdicts = [arith.score(r["prompt"], r["meta"], s.text) for s in samples]
        wire = [{"token_ids": s.token_ids, "logprobs": s.logprobs, "entropy": s.entropy, "text": s.text} for s in samples]
        groups.append(Group(r["id"], r["id"], r["prompt"], 0, wire, [v["reward"] for v in verdicts], verdicts))
    return groups, gen_s


def train_step_seconds(model, tok, groups: list[Group]) -> float:
    """Forward + backward of the whole batch (what a uniform GRPO step costs besides sampling)."""
    prompts = [tok(g.prompt)["input_ids"] for g in groups for _ in g.samples]
    comps = [s["token_ids"].tolist() for g in groups for s in g.samples]
    t = time.perf_counter()
    for lo in range(0, len(comps), 64):
        logp, mask, _ = token_logprobs(model, build_batch(prompts[lo:lo + 64], comps[lo:lo + 64], tok.pad_token_id))
        (logp * mask).sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path(".cache/scca/bootstrap-s0"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--terms", type=int, default=3)
    ap.add_argument("--digits", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()
    torch.manual_seed(0)
    engine = HFEngine(args.model, threads=args.threads, seed=0)
    rows = arith.generate(1, args.prompts, "heldout", n_terms=args.terms, digits=args.digits)
    groups, gen_s = sample_groups(engine, rows, args.group, args.max_new_tokens)
    model, tok = engine.model, engine.tokenizer
    completions = [s["token_ids"].tolist() for g in groups for s in g.samples]
    adv = torch.cat([group_advantages(torch.tensor(g.rewards, dtype=torch.float32)) for g in groups])
    step_s = gen_s + train_step_seconds(model, tok, groups)
    rewards = np.array([r for g in groups for r in g.rewards])
    print(f"batch: {len(completions)} samples, reward {rewards.mean():.3f}, {int((rewards < 1).sum())} wrong; "
          f"full step (sampling {gen_s:.2f}s + fwd/bwd) {step_s:.2f}s")
    print(f"{'variant':<16} {'err mass':>9} {'AUROC all':>10} {'AUROC upto':>11} {'mass after':>11} {'teacher/step':>13} "
          f"{'max w':>6} {'neg kept':>9}")
    for name in VARIANTS:
        cfg = CreditConfig(method=name, lam_max=args.lam, warmup_steps=0, ramp_steps=0, gate_ratio=0.0)
        step = CreditStep(cfg, model, tok, seed=0)
        for g, r in zip(groups, rows):  # a verified solution per prompt, as the bank holds after training on it
            step.bank.add(g.prompt_id, r["meta"]["solution"])
        with torch.no_grad():
            _, stats = step.weights(groups, completions, adv, step=0)
        cost = stats.get("time_teacher", 0.0) / step_s
        print(f"{name:<16} {stats.get('credit/first_error_mass', float('nan')):>9.3f} "
              f"{stats.get('credit/first_error_auroc', float('nan')):>10.3f} "
              f"{stats.get('credit/first_error_auroc_upto', float('nan')):>11.3f} "
              f"{stats.get('credit/mass_after_error', float('nan')):>11.3f} {cost:>13.2f} "
              f"{stats['credit/w_max']:>6.2f} {stats['credit/neg_weight_kept']:>9.3f}")


if __name__ == "__main__":
    main()
