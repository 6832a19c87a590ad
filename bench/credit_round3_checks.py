"""Round-3 teacher checks on a bootstrap model, before any RL (issue 10; not a test).

On the long-chain `arith` bootstrap, measures and prints (and writes as JSON):
  1. greedy held-out accuracy, plain and with the problem's correct solution in context
     (the teacher's template): the pre-registered bar is >= 80% with a reference;
  2. on >= 500 wrong samples drawn at the training temperature (groups of 8, the RL
     batch shape), the share whose self-teacher first divergence (`first_divergence`:
     min(first argmax of KL(p||q), first token with q(y) < 0.1), the cut of arm T) is the
     token holding the verifier's first wrong character (mapped with the tokenizer's
     offsets): bar >= 60%; the two halves of that definition are reported alongside;
  3. the share of wrong samples' tokens that lie after their first error: bar >= 50%;
     plus where the KL mass lies (share after the first error) and answer lengths.
The reference context is the problem's verified solution (in `arith` every correct
answer is that one string, so it is what a correct sibling or the solution bank gives).

    .venv/bin/python bench/credit_round3_checks.py --model .cache/scca/bootstrap-arith10-s0 \\
        --terms 10 --digits 1 --out bench/results/credit_round3_checks.json

Imports actors/, learner/ and verifiers/ (allowed here: bench/ is not a service).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from actors.engines.hf import HFEngine  # noqa: E402
from learner.bootstrap import evaluate_greedy, with_reference  # noqa: E402
from learner.credit.diagnostics import first_wrong_token_index, token_pieces  # noqa: E402
from learner.credit.teacher import teacher_scores  # noqa: E402
from learner.credit.variants import PREFIX_Q_THRESHOLD, first_divergence  # noqa: E402
from verifiers.tasks import arith  # noqa: E402

BARS = {"reference_accuracy": 0.80, "divergence_equals_first_wrong": 0.60, "tokens_after_first_error": 0.50}


def sample_wrong(engine: HFEngine, rows: list[dict], group: int, max_new: int, want: int, temperature: float):
    """Wrong samples (row, token ids, first-wrong token index) from groups of `group`, until `want`."""
    out, n_samples, n_correct = [], 0, 0
    for lo in range(0, len(rows), 16):
        chunk = rows[lo:lo + 16]
        groups = engine.generate([r["prompt"] for r in chunk], group, temperature=temperature, max_new_tokens=max_new)
        for r, samples in zip(chunk, groups):
            for s in samples:
                n_samples += 1
                v = arith.score(r["prompt"], r["meta"], s.text)
                if v["reward"] >= 1.0:
                    n_correct += 1
                    continue
                e = first_wrong_token_index(token_pieces(engine.tokenizer, s.token_ids.tolist()), v["first_wrong"])
                if e >= 0:
                    out.append((r, s.token_ids.tolist(), e))
        if len(out) >= want:
            break
    return out, n_samples, n_correct


def teacher_divergence(model, tok, wrong: list, micro_batch: int, temperature: float) -> dict:
    """The checks 2-3 numbers over the wrong samples (module doc)."""
    prompts = [r["prompt"] for r, _, _ in wrong]
    comps = [ids for _, ids, _ in wrong]
    ctx = [r["meta"]["solution"] for r, _, _ in wrong]
    sc = teacher_scores(model, tok, prompts, comps, ctx, micro_batch=micro_batch, temperature=temperature)
    kl, logq, mask = sc["kl"], sc["logq"], sc["mask"]
    e = torch.tensor([x for _, _, x in wrong])
    n = mask.sum(dim=1).long()
    d_design = first_divergence(kl, mask, logq)
    d_argmax = first_divergence(kl, mask)
    low = (mask > 0) & (logq < math.log(PREFIX_Q_THRESHOLD))
    d_lowq = torch.where(low.any(dim=1), low.int().argmax(dim=1), torch.full_like(e, -1))
    cols = torch.arange(mask.shape[1])[None, :]
    after = (cols > e[:, None]) & (mask > 0)
    kl_after = (kl * after).sum(1) / (kl * mask).sum(1).clamp(min=1e-12)
    return {
        "wrong_samples": len(wrong),
        "divergence_equals_first_wrong": float((d_design == e).float().mean()),
        "divergence_before_first_wrong": float((d_design < e).float().mean()),
        "divergence_after_first_wrong": float((d_design > e).float().mean()),
        "argmax_kl_equals_first_wrong": float((d_argmax == e).float().mean()),
        "first_low_q_equals_first_wrong": float((d_lowq == e).float().mean()),
        "tokens_after_first_error": float(after.sum() / mask.sum()),
        "tokens_after_first_error_mean_per_sample": float((after.sum(1) / n).mean()),
        "kl_mass_after_first_error": float(kl_after.mean()),
        "first_error_token_mean": float(e.float().mean()),
        "wrong_length_tokens_mean": float(n.float().mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--terms", type=int, default=10)
    ap.add_argument("--digits", type=int, default=1)
    ap.add_argument("--heldout", type=int, default=500, help="problems for the greedy accuracies")
    ap.add_argument("--wrong", type=int, default=500, help="wrong samples for checks 2-3 (at least)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    engine = HFEngine(args.model, threads=args.threads, seed=0)
    model, tok = engine.model, engine.tokenizer
    held = arith.generate(0, args.heldout, "heldout", n_terms=args.terms, digits=args.digits)
    plain = evaluate_greedy(model, tok, held, arith.score, max_new_tokens=args.max_new_tokens)
    ref = evaluate_greedy(model, tok, with_reference(held), arith.score, max_new_tokens=args.max_new_tokens)
    rows = arith.generate(1, 4 * args.wrong, "heldout", n_terms=args.terms, digits=args.digits)
    wrong, n_samples, n_correct = sample_wrong(engine, rows, args.group, args.max_new_tokens, args.wrong,
                                               args.temperature)
    result = {"model": str(args.model), "terms": args.terms, "digits": args.digits,
              "greedy_accuracy": plain, "reference_accuracy": ref, "heldout_n": len(held),
              "sampled": n_samples, "sampled_accuracy": n_correct / max(1, n_samples),
              **teacher_divergence(model, tok, wrong, 32, args.temperature)}
    result["passes"] = {k: result[k] >= bar for k, bar in BARS.items()}
    result["bars"] = BARS
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
