"""Run the real bootstrap once and print its figures (not a test).

Builds the tiny default model, SFTs it on `arith` (seed 0: 200k train rows, 500 held-out)
until greedy held-out accuracy is in the bootstrap window, then measures the accuracy with
the problem's correct solution in the context on 200 held-out problems (DESIGN §6 reports
15% plain at step ~410, 34% with a reference).

    .venv/bin/python bench/bootstrap_check.py [--out /tmp/scca-bootstrap-trial] [--seed 0]

Imports both learner/ and verifiers/ (allowed here: bench/ is not a service).
"""

from __future__ import annotations

import os
import sys

# Running `python bench/bootstrap_check.py` puts bench/ first on sys.path, where
# bench/verifiers.py would shadow the `verifiers` package: drop that entry.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
# libgomp's default busy-wait makes 2 torch threads crawl when other processes share the
# 2 cores (measured 5-8x slower per step); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from learner.bootstrap import bootstrap, evaluate_greedy, with_reference  # noqa: E402
from learner.model import load_model_folder  # noqa: E402
from verifiers.tasks import arith  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/scca-bootstrap-trial"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-rows", type=int, default=200_000)
    ap.add_argument("--heldout-rows", type=int, default=500)
    ap.add_argument("--reference-rows", type=int, default=200)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    t = time.perf_counter()
    train = arith.generate(args.seed, args.train_rows, "train")
    heldout = arith.generate(args.seed, args.heldout_rows, "heldout")
    print(f"generated {len(train)} train / {len(heldout)} held-out rows "
          f"in {time.perf_counter() - t:.1f}s")

    result = bootstrap(
        args.out, train, heldout, arith.score, seed=args.seed,
        max_steps=args.max_steps, eval_every=args.eval_every, num_threads=args.threads,
    )

    torch.set_num_threads(args.threads)
    model, tok = load_model_folder(args.out)
    ref_rows = with_reference(heldout[: args.reference_rows])
    max_new = result["config"]["max_new_tokens"]
    plain_acc = evaluate_greedy(model, tok, heldout[: args.reference_rows], arith.score,
                                max_new_tokens=max_new)
    ref_acc = evaluate_greedy(model, tok, ref_rows, arith.score, max_new_tokens=max_new)
    summary = {
        "steps": result["steps"],
        "wall_seconds": round(result["wall_seconds"], 1),
        "heldout_accuracy_500": result["heldout_accuracy"],
        "eval_accuracy_at_stop": result["eval_accuracy_at_stop"],
        f"reloaded_plain_accuracy_{len(ref_rows)}": plain_acc,
        f"reference_in_context_accuracy_{len(ref_rows)}": ref_acc,
        "history": [(h["step"], round(h["train_loss"], 4), h["eval_accuracy"])
                    for h in result["history"]],
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
