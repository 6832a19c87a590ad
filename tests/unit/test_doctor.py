"""`scca doctor`: one ok/warn/fail line per check, a verdict, exit 1 on any failure."""

from __future__ import annotations

import io
import json

from deploy.doctor import CHECKS, doctor
from tiny import save_tiny


def _doctor(tmp_path, config_text: str, overrides: dict | None = None) -> tuple[int, list[str]]:
    cfg = tmp_path / "run.toml"
    cfg.write_text(config_text)
    out = io.StringIO()
    rc = doctor(str(cfg), overrides or {}, tmp_path / "runs", out=out)
    lines = out.getvalue().splitlines()
    assert all(line.split()[0] in ("ok", "warn", "fail") for line in lines), lines
    return rc, lines


def _named(lines: list[str], check: str) -> list[str]:
    return [line for line in lines if line.split()[1] == check]


def test_a_good_setup_passes_every_check(tmp_path):
    model = save_tiny(tmp_path / "model")
    rc, lines = _doctor(tmp_path, f'[model]\nfolder = "{model}"\n[task]\nname = "arith"\n')
    assert rc == 0, "\n".join(lines)
    assert {line.split()[1] for line in lines} == {name for name, _ in CHECKS} | {"verdict"}
    assert _named(lines, "verdict")[0].startswith(("ok", "warn")) and "0 fail" in lines[-1]
    assert any("round-trips" in line for line in _named(lines, "tokenizer"))
    assert any("eos token" in line for line in _named(lines, "tokenizer"))
    assert any("pad token" in line for line in _named(lines, "tokenizer"))
    assert any("bindable" in line for line in _named(lines, "ports"))
    assert any("GiB free" in line for line in _named(lines, "disk"))


def test_failures_are_named_and_exit_1(tmp_path):
    model = save_tiny(tmp_path / "model")
    (model / "tokenizer_config.json").write_text(json.dumps({
        **json.loads((model / "tokenizer_config.json").read_text()), "pad_token": None}))
    data = tmp_path / "train.jsonl"
    data.write_text('{"id": "a", "prompt": "1+1=", "meta": {}}\n{"id": "b", "prompt": 7, "meta": {}}\n')
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text('{"id": "h", "prompt": "Hello?", "meta": {}}\n')
    rc, lines = _doctor(tmp_path, f'[model]\nfolder = "{model}"\n[task]\ntrain_file = "{data}"\n'
                                  f'heldout_file = "{heldout}"\n[hub]\nbind = "tcp://256.0.0.1:1"\n')
    assert rc == 1
    assert any(f"{data}:2: field 'prompt' must be str" in line for line in _named(lines, "data") if line.startswith("fail"))
    assert any("does not round-trip 1 of 1 prompts, e.g. 'Hello?'" in line for line in _named(lines, "tokenizer"))
    # no pad token is fine (Qwen and Llama tokenizers come without one): batches pad with eos, masked
    assert any(line.startswith("ok") and "no pad token: batches pad with eos id" in line
               for line in _named(lines, "tokenizer"))
    assert any(line.startswith("fail") and "tcp://256.0.0.1:1 cannot be bound" in line for line in _named(lines, "ports"))
    assert lines[-1].startswith("fail  verdict")


def test_a_bad_config_names_file_and_line_and_stops(tmp_path):
    rc, lines = _doctor(tmp_path, "[learner]\nlr = 1e-4\nmax_stepz = 3\n")
    assert rc == 1
    assert lines[0].startswith("fail  config") and f"{tmp_path / 'run.toml'}:3: [learner.max_stepz] unknown key" in lines[0]
    assert len(lines) == 2 and "fix the config first" in lines[-1]


def test_prompt_format_is_checked_against_the_model(tmp_path):
    """A chat format on a folder without a template fails, naming the folder; a folder that
    `scca make-model --warm-start` wrote warns when the run asks in another format."""
    model = save_tiny(tmp_path / "model")
    rc, lines = _doctor(tmp_path, f'[model]\nfolder = "{model}"\n[task]\nname = "arith"\nprompt_format = "chat"\n')
    assert rc == 1
    assert any(line.startswith("fail") and f"model folder {model} has no chat template" in line
               for line in _named(lines, "prompts")), lines
    (model / "warm_start.json").write_text(json.dumps({"prompt_format": "raw", "system_prompt": ""}))
    rc, lines = _doctor(tmp_path, f'[model]\nfolder = "{model}"\n[task]\nname = "arith"\n')
    assert rc == 0 and [line.split()[0] for line in _named(lines, "prompts")] == ["ok"], lines
    (model / "warm_start.json").write_text(json.dumps({"prompt_format": "chat", "system_prompt": "Be brief."}))
    rc, lines = _doctor(tmp_path, f'[model]\nfolder = "{model}"\n[task]\nname = "arith"\n')
    warned = [line for line in _named(lines, "prompts") if line.startswith("warn")]
    assert rc == 0 and len(warned) == 1 and "warm-started with prompt_format 'chat' and system prompt 'Be brief.'" in warned[0]
