"""The "real checkpoint" test model: a Qwen2-architecture folder as people download them,
built locally with the `scca` command and cached like the bootstrap models.

    python tests/integration/qwen_gsm.py .cache/scca/qwen2-gsm-s0     (make test does this)

What it builds, with no download: GSM8K-style word problems (`scca data math`: one-step
+/- on numbers up to 10, `question` / `answer: "... #### x"`), and `scca make-model`: a
tied-embedding Qwen2 (bf16 safetensors, byte-level BPE trained on the problems, ChatML
template, eos <|im_end|>, a list of eos ids in generation_config.json, no pad token)
warm-started on them in the chat format. Layout: train.jsonl, heldout.jsonl, model/.

Not a test: the integration tests (test_own_model.py, test_vllm_own_model.py) use it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = ["--kinds", "add,sub", "--max-number", "10"]
TRAIN_ROWS, HELDOUT_ROWS = 3000, 200
WARM_START = ["--arch", "qwen2", "--hidden", "64", "--layers", "2", "--steps", "300", "--lr", "3e-3"]


def commands(folder: Path) -> list[list[str]]:
    cli = [sys.executable, "-m", "deploy.cli"]
    return [
        cli + ["data", "math", "--n", str(TRAIN_ROWS), "--out", str(folder / "train.jsonl"), *PROBLEMS],
        cli + ["data", "math", "--n", str(HELDOUT_ROWS), "--split", "heldout", "--out", str(folder / "heldout.jsonl"),
               *PROBLEMS],
        cli + ["make-model", "--out", str(folder / "model"), "--warm-start", str(folder / "train.jsonl"), *WARM_START],
    ]


def build(folder: Path) -> Path:
    """Build the folder unless it is complete; atomic (a `.building` sibling renamed at the end)."""
    folder = Path(folder)
    if (folder / "model" / "warm_start.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for cmd in commands(tmp):
        subprocess.run(cmd, cwd=ROOT, check=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
