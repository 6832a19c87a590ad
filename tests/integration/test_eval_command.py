"""`scca eval` as a user runs it: the real CLI process, the real model folders and scorers.

The bootstrap model's held-out accuracy equals the one its bootstrap recorded (the same
prompts, greedy decoding and scorer), and a Qwen2-style chat model scores the same on
GSM8K-style questions given as strings (JSONL) and as verl-style chat messages (Parquet)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.integration


def _eval(*args: str) -> tuple[int, str, dict | None, str]:
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", "eval", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    out = next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), None)
    summary = json.loads(open(out).read()) if out and proc.returncode == 0 else None
    return proc.returncode, proc.stdout, summary, proc.stderr


def test_eval_reproduces_the_bootstraps_heldout_accuracy(bootstrap_dir, tmp_path):
    rc, stdout, summary, _ = _eval("--model", str(bootstrap_dir), f"--out={tmp_path / 'e.json'}")
    recorded = json.loads((bootstrap_dir / "bootstrap.json").read_text())
    assert rc == 0 and summary["prompts"] == recorded["heldout_n"] == 500
    assert summary["accuracy"] == pytest.approx(recorded["heldout_accuracy"], abs=1e-9)
    assert f"held-out accuracy {recorded['heldout_accuracy']:.3f} (greedy" in stdout
    rc, _, sampled, _ = _eval("--model", str(bootstrap_dir), "--samples", "4", "--limit", "20",
                              f"--out={tmp_path / 's.json'}")
    assert rc == 0 and sampled["prompts"] == 20 and all(len(r["rewards"]) == 4 for r in sampled["results"])
    assert sampled["accuracy"] == pytest.approx(sum(sum(r["rewards"]) / 4 for r in sampled["results"]) / 20)
    rc, _, _, stderr = _eval("--model", str(tmp_path / "nothing"))
    assert rc == 2 and "nothing: not a model folder (no config.json) (--model)" in stderr


def test_chat_message_data_scores_like_the_same_questions_as_strings(qwen_gsm, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(x) for x in (qwen_gsm / "heldout.jsonl").read_text().splitlines()][:60]
    (tmp_path / "strings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    verl = [{"data_source": "gsm8k", "prompt": [{"role": "user", "content": r["question"]}],
             "reward_model": {"style": "rule", "ground_truth": r["answer"].rsplit("#### ", 1)[1]}} for r in rows]
    pq.write_table(pa.Table.from_pylist(verl), tmp_path / "chat.parquet")
    got = {}
    for name in ("strings.jsonl", "chat.parquet"):
        rc, _, summary, stderr = _eval("--model", str(qwen_gsm / "model"), "--set", 'task.name="math"',
                                       "--set", 'task.prompt_format="chat"', "--set", "actor.max_new_tokens=32",
                                       "--set", f'task.train_file="{tmp_path / name}"',
                                       "--set", f'task.heldout_file="{tmp_path / name}"', f"--out={tmp_path / name}.json")
        assert rc == 0, stderr
        got[name] = summary
    assert got["strings.jsonl"]["accuracy"] > 0.1  # the warm-started model answers some
    assert got["chat.parquet"]["accuracy"] == got["strings.jsonl"]["accuracy"]
    assert [r["completion"] for r in got["chat.parquet"]["results"]] == [r["completion"] for r in got["strings.jsonl"]["results"]]
