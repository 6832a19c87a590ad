"""Progress lines, failure reports and the launcher's preflight (no process is started)."""

from __future__ import annotations

import json

import pytest

from deploy.cli import main
from deploy.preflight import InputError, check_inputs, check_run_dir
from deploy.report import exit_report, one_line_reason, tail_lines
from learner.progress import TABLE_COLUMNS, format_line, progress_fields, table_row
from protocol.config import ConfigError, load_config, parse_config


def test_progress_line_has_every_field_and_a_session_eta():
    state = {"step": 30, "samples_trained": 3840, "wall_before": 100.0}
    row = {"samples_per_s": 41.24, "reward_mean": 0.2812, "lags": [0, 1, 1, 0]}
    f = progress_fields(state, row, 150, [0.12, 0.14], {"no_signal": 230, "stale": 3}, (2, 1), 60.0, 10, "training")
    assert f["eta_s"] == pytest.approx(120 * 6.0) and f["elapsed_s"] == 160.0 and f["lag"] == 0.5
    line = format_line(f)
    assert line == ("step 30/150 | samples 3840 (41.2/s) | reward 0.281 | held-out 0.120 -> 0.140 | lag 0.50 | "
                    "dropped no-signal 230, stale 3 | peers 2a/1v | elapsed 0:02:40 | ETA 0:12:00 | training")
    assert len(table_row(f)) == len(TABLE_COLUMNS)
    first = progress_fields({"step": 0}, None, 150, [], {}, (0, 0), 5.0, 0, "waiting for actors")
    assert format_line(first).startswith("step 0/150 | samples 0 (-/s) | reward - | held-out - | lag -")
    assert first["eta_s"] is None and "ETA - | waiting for actors" in format_line(first)


def test_one_line_reason_prefers_the_learners_own_words(tmp_path):
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                 "protocol.dataset.DatasetError: data/train.jsonl:7: not JSON: Expecting value"]
    assert one_line_reason(traceback) == traceback[-1]
    assert one_line_reason(["2024 learner INFO run ended (stalled): 64 groups in a row", "bye"]) == \
        "(stalled): 64 groups in a row"
    assert one_line_reason(["a", "2024 x ERROR the disk is full", "b"]) == "2024 x ERROR the disk is full"
    assert one_line_reason([]) == "(empty log)"
    log = tmp_path / "learner.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + traceback[-1] + "\n")
    assert tail_lines(log, 3) == ["line 98", "line 99", traceback[-1]]
    report = exit_report("learner", -9, log)
    assert report.startswith("learner killed by SIGKILL: protocol.dataset.DatasetError: data/train.jsonl:7")
    assert "  | line 99" in report and "  | line 79" not in report


def test_out_folder_must_be_new_and_resume_needs_a_checkpoint(tmp_path):
    check_run_dir(tmp_path / "new", resume=False)
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty", resume=False)
    done = tmp_path / "done"
    done.mkdir()
    (done / "config.json").write_text("{}")
    with pytest.raises(InputError, match=r"--out .*done is not empty .* `scca run --resume "):
        check_run_dir(done, resume=False)
    with pytest.raises(InputError, match=r"checkpoint: no checkpoint: the run stopped before its first one"):
        check_run_dir(done, resume=True)
    with pytest.raises(InputError, match="not a run folder"):
        check_run_dir(tmp_path / "empty", resume=True)


def test_data_files_are_read_before_anything_starts_naming_file_and_line(tmp_path):
    good = {"id": "a", "prompt": "1+1=", "meta": {"answer": "2"}}
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "b"}) + "\n{oops\n")
    cfg = parse_config({"task": {"train_file": str(train)}})
    with pytest.raises(InputError, match=rf"{train}:3: not valid JSON.*\[task\] train_file"):
        check_inputs(cfg)
    with pytest.raises(InputError, match=r"missing\.jsonl: no such file \(\[task\] heldout_file\)"):
        check_inputs(parse_config({"task": {"heldout_file": str(tmp_path / "missing.jsonl")}}))
    with pytest.raises(InputError, match="task 'math' reads its prompts from a file"):
        check_inputs(parse_config({"task": {"name": "math"}}))
    math_file = tmp_path / "math.jsonl"
    math_file.write_text('{"prompt": "2+2?", "answer": "4"}\n{"prompt": 3, "answer": "4"}\n')
    with pytest.raises(InputError, match=rf"{math_file}:2: field 'prompt' must be a non-empty string or chat messages, got int"):
        check_inputs(parse_config({"task": {"name": "math", "train_file": str(math_file), "heldout_file": str(math_file)}}))
    train.write_text(json.dumps(good) + "\n")
    assert check_inputs(cfg) == {"train": 1}


def test_config_problems_name_file_and_line(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text("[learner]\nlr = 1e-4\n\n[actor]\ngroup_size = 1\ncolour = 'red'\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, {"learner": {"max_steps": -1}})
    text = str(e.value)
    assert f"{p}:5: [actor.group_size]" in text and f"{p}:6: [actor.colour] unknown key" in text
    assert "--set learner.max_steps: [learner.max_steps]" in text
    p.write_text("[learner]\nlr = = 1\n")
    with pytest.raises(ConfigError, match=rf"{p}:2: not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="nope.toml: no such config file"):
        load_config(tmp_path / "nope.toml")


def test_scca_run_refuses_bad_input_with_exit_2_and_no_traceback(tmp_path, capsys):
    out = tmp_path / "finished"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["run", "--out", str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["run", "--resume", str(out)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "new")]) == 2
    assert "missing.toml: no such config file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # nothing was started or written
    assert main(["learner", str(tmp_path / "missing.toml"), "--run-dir", str(tmp_path / "r")]) == 2


def test_run_and_learner_options_have_help():
    from deploy.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    for name in ("run", "learner", "actor", "verifier", "doctor"):
        for action in sub.choices[name]._actions:
            if action.dest != "help":
                assert action.help, f"scca {name} {action.dest} has no help"


def test_without_a_terminal_progress_is_plain_lines_and_warnings_are_echoed(tmp_path, capsys):
    from rich.console import Console

    from deploy.progress import ProgressView

    cfg = parse_config({})
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "learner.log"
    log.write_text("2024-01-01 10:00:00,000 learner WARNING from an earlier session\n")
    view = ProgressView(tmp_path, cfg, Console(stderr=True), log_offset=log.stat().st_size, tty=False)
    fields = progress_fields({"step": 1, "samples_trained": 16}, {"samples_per_s": 2.0, "reward_mean": 0.25}, 10,
                             [], {"no_signal": 5}, (1, 1), 8.0, 1, "training")
    line1 = format_line(fields)
    fields["step"] = 2
    with open(log, "a") as f:
        f.write(f"2024-01-01 10:00:01,000 learner INFO progress: {line1}\n"
                "2024-01-01 10:00:02,000 learner WARNING stall warning (no_signal): 64 groups\n2024 half")
    with view:
        view.update()
        with open(log, "a") as f:
            f.write(f" line\n2024-01-01 10:00:03,000 learner INFO progress: {format_line(fields)}\n")
        view.update()
        view.child_exited("actor-0", 0, log)  # a normal end is not reported
        vlog = tmp_path / "logs" / "verifier-1.log"
        vlog.write_text("scoring\n")
        view.child_exited("verifier-1", -9, vlog)
        view.child_exited("verifier-1", -9, vlog)  # once
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"2024-01-01 10:00:01 {line1}"
    assert err[1] == "2024-01-01 10:00:02,000 learner WARNING stall warning (no_signal): 64 groups"
    assert err[2].startswith("2024-01-01 10:00:03 step 2/10 | samples 16 (2.0/s) | reward 0.250 |")
    assert not any("earlier session" in line or "half" in line for line in err)
    assert sum("verifier-1 killed by SIGKILL: scoring" in line for line in err) == 1
    assert not any("actor-0" in line for line in err)


def test_the_preflight_reads_a_users_file_through_the_configured_field_mapping(tmp_path):
    """[task] prompt_field / answer_field reach the checks `scca run` and `scca doctor` make
    before any process starts (they used to read the file without the mapping and refuse it)."""
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"input": f"{i} + 1 = ?", "target": f"#### {i + 1}"}) + "\n" for i in range(3)))
    task = {"name": "math", "train_file": str(data), "heldout_file": str(data)}
    with pytest.raises(InputError, match=r"mine.jsonl:1: no prompt field: expected one of"):
        check_inputs(parse_config({"task": task}))
    assert check_inputs(parse_config({"task": {**task, "prompt_field": "input", "answer_field": "target"}})) == {
        "train": 3, "heldout": 3}


def test_a_hugging_face_cache_entry_names_its_snapshot(tmp_path):
    """[model] folder at models--ORG--NAME/ (the hub cache's layout: refs/main -> snapshots/HASH,
    whose files link into blobs/) is refused naming the snapshot folder to use, which then passes."""
    import shutil

    from learner.local_models import build_model_folder

    built = build_model_folder(tmp_path / "built", "qwen2", seed=1)
    entry = tmp_path / "hub" / "models--acme--tiny-qwen"
    snapshot, blobs = entry / "snapshots" / ("ab12" * 10), entry / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in built.iterdir():
        shutil.copy(f, blobs / f.name)
        (snapshot / f.name).symlink_to(blobs / f.name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("ab12" * 10)
    task = {"name": "arith"}
    with pytest.raises(InputError, match=rf"{entry}: not a model folder \(no config.json\) \(\[model\] folder\); it is a "
                                         rf"Hugging Face cache entry: use {snapshot}"):
        check_inputs(parse_config({"task": task, "model": {"folder": str(entry)}}))
    assert check_inputs(parse_config({"task": task, "model": {"folder": str(snapshot)}})) == {}
