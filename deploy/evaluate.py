"""`scca eval [CONFIG] [--model FOLDER]`: held-out accuracy of a model folder, offline, in one process.

What it does, top to bottom: reads the run's held-out prompts as `scca run` would (a
learner prompt file as it is, e.g. a run folder's converted data/heldout.jsonl; a user's
file through the preflight's reader: the task's field mapping, errors naming file and
line; else the procedural generator) -> renders them in the run's prompt format (`PromptRenderer.for_task`: the ids
the learner would send) -> generates with the Hugging Face engine the actors use (greedy,
or `--samples k` at `[actor] temperature` / `top_p`; `[actor] max_new_tokens` and `stop`)
-> scores every completion with the task's scorer or the plug-in reward, in this process
-> prints accuracy (the mean reward, as the run's `heldout.jsonl` reports it) and the
share of prompts with reward 1, and with `--out` writes a JSON of the summary plus every
prompt's rewards and first completion.

`--model` takes a model folder, a snapshot, or a run folder (its `final_model/`); without
it, `[model] folder` (else the bootstrap model) is evaluated. A run's step-0 held-out
accuracy is what this gives for its starting folder (the same ids, engine and scorer).

What it does not do: use actors, vLLM, verifier processes or the hub; touch a run's
ledger; train; time out a slow scorer (the verifier service does; here a hang is yours
to see).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from protocol.config import ConfigError, RunConfig

PROMPTS_PER_CALL = 64  # prompts generated per engine call (each repeated `samples` times)


def model_to_evaluate(cfg: RunConfig, given: str | None) -> Path:
    """The folder `--model` names (a run folder means its final_model/), else the run's own."""
    folder = Path(given or cfg.model.folder or cfg.model.bootstrap_dir)
    if (folder / "final_model" / "config.json").is_file():
        folder = folder / "final_model"
    if not (folder / "config.json").is_file():
        from deploy.preflight import not_a_model_folder

        raise ConfigError(not_a_model_folder(folder).replace("([model] folder)", "(--model)"))
    return folder


def heldout_rows(cfg: RunConfig) -> list[dict]:
    """The held-out prompt rows a run of `cfg` would evaluate on, through the preflight's
    reader (a prompt file in the learner's format as it is, such as the data/heldout.jsonl a
    run folder's config.json names; else the task's reader, errors naming file and line),
    else generated."""
    from deploy.launcher import prompt_rows
    from deploy.preflight import read_prompt_file

    given = cfg.task.heldout_file
    return read_prompt_file(cfg, "heldout", given) if given else prompt_rows(cfg, "heldout", given)[0]


def evaluate_folder(cfg: RunConfig, folder: Path, rows: list[dict], samples: int) -> dict:
    """Generate and score every row; the summary and the per-prompt results."""
    from actors.engines.hf import HFEngine
    from protocol.prompts import PromptRenderer
    from verifiers.scoring import score_many, settings_from_config

    a, task = cfg.actor, cfg.task.reward or cfg.task.name
    engine = HFEngine(folder, threads=cfg.learner.threads, seed=cfg.learner.seed, stop=tuple(a.stop))
    ids = PromptRenderer.for_task(engine.tokenizer, cfg.task, folder).encode_many([r["prompt"] for r in rows])
    settings, results, t0 = settings_from_config(cfg), [], time.perf_counter()
    for start in range(0, len(rows), PROMPTS_PER_CALL):
        outs = engine.generate(ids[start:start + PROMPTS_PER_CALL], samples,
                               temperature=0.0 if samples == 1 else a.temperature, top_p=a.top_p,
                               max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
        for row, group in zip(rows[start:start + PROMPTS_PER_CALL], outs):
            rewards, details, _ = score_many(task, row["prompt"], row["meta"], [s.text for s in group], settings)
            results.append({"id": row["id"], "rewards": rewards, "completion": group[0].text,
                            "reason": details[0].get("reason")})
    means = [float(np.mean(r["rewards"])) for r in results]
    return {"model": str(folder), "task": task, "prompts": len(rows), "samples": samples,
            "accuracy": float(np.mean(means)), "solved": float(np.mean([m >= 1.0 for m in means])),
            "prompt_format": cfg.task.prompt_format, "seconds": time.perf_counter() - t0, "results": results}


def run_eval(cfg: RunConfig, model: str | None, samples: int, limit: int, out: str | None) -> int:
    """`scca eval`: print the summary line (and write `out`); exit status 0."""
    if samples < 1 or limit < 0:
        raise ConfigError(f"scca eval: --samples must be >= 1 and --limit >= 0, got {samples} and {limit}")
    folder = model_to_evaluate(cfg, model)
    rows = heldout_rows(cfg)
    rows = rows[:limit] if limit else rows
    summary = evaluate_folder(cfg, folder, rows, samples)
    how = "greedy" if samples == 1 else f"mean of {samples} samples at temperature {cfg.actor.temperature}"
    solved = "reward 1" if samples == 1 else f"reward 1 in all {samples} samples"
    print(f"held-out accuracy {summary['accuracy']:.3f} ({how}; {solved} on {summary['solved']:.1%} of "
          f"{summary['prompts']} prompts) for {folder}, task {summary['task']}, format "
          f"{summary['prompt_format']}, in {summary['seconds']:.1f} s")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(summary, indent=1))
        print(f"wrote {out}")
    return 0
