"""The learner step before and after length-bucketed micro-batches, side by side.

Samples real rollout groups from the bootstrap model on the default config's task (16
groups of 8 at temperature 1, as the actors would), then times one optimiser update on
them both ways, alternating `--repeats` times on copies of the same model and optimiser:
  * `unsorted`: micro-batches of `micro_batch` rows in group order, each left-padded to
    its longest row (what the trainer did before);
  * `bucketed`: rows sorted by length first (`learner/update.py`), same micro-batch size.
Both run the same loss on the same rows, so the losses must agree (printed). Prints the
median seconds of each, the ratio, the positions each ran (padding) and the load average;
results into `bench/results/learner_step.json`.

    .venv/bin/python bench/learner_step.py [--repeats 10] [--micro-batch 64]

Does NOT: measure the teacher pass (uniform credit), publish or evaluate.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # bench/verifiers.py shadows the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import learner.update as U  # noqa: E402
from actors.engines.hf import HFEngine  # noqa: E402
from learner.hub import Group  # noqa: E402
from protocol.config import load_config  # noqa: E402
from verifiers.scoring import score_many  # noqa: E402
from verifiers.tasks import TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sample_groups(cfg, folder: Path, n_groups: int) -> list[Group]:
    """n_groups scored groups of the task's training prompts, sampled like the actors do."""
    a = cfg.actor
    engine = HFEngine(folder, threads=cfg.learner.threads)
    rows = TASKS[cfg.task.name].generate(cfg.task.seed, n_groups, "train")
    outs = engine.generate([r["prompt"] for r in rows], a.group_size, temperature=a.temperature,
                           max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    groups = []
    for r, samples in zip(rows, outs):
        rewards, details, _ = score_many(cfg.task.name, r["prompt"], r["meta"], [s.text for s in samples])
        if len(set(rewards)) == 1:
            rewards = [1.0] + [0.0] * (len(rewards) - 1)  # timing only: every group carries signal
        sd = [{"token_ids": s.token_ids, "logprobs": s.logprobs, "text": s.text} for s in samples]
        groups.append(Group(r["id"], r["id"], r["prompt"], 0, sd, rewards, details))
    return groups


def unsorted_buckets(lengths: list[int], max_rows: int) -> list[list[int]]:
    """The old cut: consecutive rows in group order."""
    return [list(range(lo, min(lo + max_rows, len(lengths)))) for lo in range(0, len(lengths), max_rows)]


def one_update(model, opt, flat, w, cfg, micro_batch: int, pad_id: int, sort: bool) -> tuple[float, dict]:
    orig = U.length_buckets
    U.length_buckets = orig if sort else unsorted_buckets
    try:
        t = time.perf_counter()
        stats = U.policy_update(model, opt, flat, w, loss_cfg=cfg.loss, micro_batch=micro_batch,
                                grad_clip=cfg.learner.grad_clip, pad_id=pad_id, bf16=False)
        return time.perf_counter() - t, stats
    finally:
        U.length_buckets = orig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "deploy" / "default.toml"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--micro-batch", type=int, default=0, help="0 = the config's learner.micro_batch")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "learner_step.json"))
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.set_num_threads(cfg.learner.threads)
    folder = ROOT / cfg.model.bootstrap_dir
    micro = args.micro_batch or cfg.learner.micro_batch
    groups = sample_groups(cfg, folder, cfg.learner.prompts_per_step)
    tok = AutoTokenizer.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    flat = U.flatten_groups(groups, lambda p: tok(p)["input_ids"], std_normalize=cfg.loss.std_normalize)
    T = max(len(c) for c in flat.completions)
    w = torch.stack([torch.cat([torch.ones(len(c)), torch.zeros(T - len(c))]) for c in flat.completions])  # [N,T]
    times, stats = {"unsorted": [], "bucketed": []}, {}
    for rep in range(args.repeats):
        for arm in (("unsorted", "bucketed") if rep % 2 == 0 else ("bucketed", "unsorted")):
            model = copy.deepcopy(base)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr)
            dt, stats[arm] = one_update(model, opt, flat, w, cfg, micro, tok.pad_token_id, arm == "bucketed")
            times[arm].append(dt)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ratio = med["bucketed"] / med["unsorted"]
    print(f"{len(flat.completions)} rows, micro-batch {micro}: unsorted {med['unsorted']:.3f}s "
          f"({stats['unsorted']['padded_tokens']} positions), bucketed {med['bucketed']:.3f}s "
          f"({stats['bucketed']['padded_tokens']} positions); bucketed/unsorted {ratio:.2f}; "
          f"loss {stats['unsorted']['loss']:.6f} vs {stats['bucketed']['loss']:.6f}; load {os.getloadavg()[0]:.1f}")
    out = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]), "rows": len(flat.completions),
           "micro_batch": micro, "seconds": times, "median_s": med, "bucketed_over_unsorted": ratio,
           "padded_tokens": {k: v["padded_tokens"] for k, v in stats.items()},
           "loss": {k: v["loss"] for k, v in stats.items()}, "loadavg": os.getloadavg()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
