"""Users' data files: GSM8K / MATH / prompt-answer through the field mapping, duplicates merged
and counted, errors naming file:line, `scca data math`, and the launcher's preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.cli import main as scca
from deploy.launcher import prepare_run
from protocol.config import ConfigError, parse_config
from verifiers.tasks import code, math, wordproblems
from verifiers.tasks.fields import DataError, gold_answer

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gold_answer_of_gsm8k_math_and_plain_texts():
    assert gold_answer("She pays 2 * $1,250 = $2,500.\n#### 2,500") == "2500"
    assert gold_answer("So $x = \\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer(" 42 ") == "42"


def test_gsm8k_math_and_prompt_answer_shapes_are_read(tmp_path):
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "Tom has 2 + 3 apples?", "answer": "2 + 3 = 5\n#### 5"}])
    [row] = math.load(gsm)
    assert row["prompt"] == "Tom has 2 + 3 apples?" and row["meta"] == {"answer": "5", "solution": "2 + 3 = 5\n#### 5"}
    hendrycks = _write(tmp_path / "math.jsonl", [{"problem": "Half of 1?", "solution": "It is $\\boxed{\\frac12}$.",
                                                  "level": "Level 1"}])
    assert math.load(hendrycks)[0]["meta"]["answer"] == "\\frac12"
    plain = _write(tmp_path / "plain.jsonl", [{"id": "q1", "prompt": "1+1?", "answer": 2}])
    assert math.load(plain) == [{"id": "q1", "prompt": "1+1?", "meta": {"answer": "2"}}]
    mapped = _write(tmp_path / "mapped.jsonl", [{"input": "3+4?", "target": "7", "question": "ignored"}])
    rows, report = math.load(mapped, prompt_field="input", answer_field="target", with_report=True)
    assert rows[0]["prompt"] == "3+4?" and rows[0]["meta"]["answer"] == "7"
    assert (report.prompt_field, report.answer_field, report.places) == ("input", "target", [f"{mapped}:1"])


def test_duplicates_are_merged_and_counted_not_fatal(tmp_path):
    f = _write(tmp_path / "d.jsonl", [{"question": "A?", "answer": "#### 1"}, "",
                                      {"question": "B?", "answer": "#### 2"},
                                      {"question": "A?", "answer": "#### 1"},
                                      {"question": "A?", "answer": "#### 3"}])
    rows, report = math.load(f, with_report=True)
    assert [r["prompt"] for r in rows] == ["A?", "B?"] and rows[0]["meta"]["answer"] == "1"  # the first is kept
    assert (report.duplicates_merged, report.duplicates_conflicting, report.places) == (2, 1, [f"{f}:1", f"{f}:3"])


@pytest.mark.parametrize("lines, message", [
    (['{"question": "A?", "answer": "1"}', "{oops"], r"bad.jsonl:2: not valid JSON"),
    (['[1, 2]'], r"bad.jsonl:1: expected a JSON object"),
    (['{"text": "A?", "answer": "1"}'], r"bad.jsonl:1: no prompt field: expected one of \['prompt', 'question', 'problem'\]"),
    (['{"question": "A?"}'], r"bad.jsonl:1: no answer field"),
    (['{"question": "", "answer": "1"}'], r"bad.jsonl:1: field 'question' must be a non-empty string"),
    (['{"question": "A?", "answer": [1]}'], r"bad.jsonl:1: field 'answer' must be a string or a number"),
    (['{"id": "x", "prompt": "A?", "answer": "1"}', '{"id": "x", "prompt": "B?", "answer": "2"}'],
     r"bad.jsonl:2: id 'x' is already used by another prompt"),
])
def test_every_data_error_names_the_file_and_line(tmp_path, lines, message):
    f = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=message):
        math.load(f)


def test_code_rows_through_the_same_reader(tmp_path):
    f = _write(tmp_path / "c.jsonl", [{"prompt": "Write f.", "tests": "assert f(1) == 1"},
                                      {"prompt": "Write f.", "tests": "assert f(1) == 1"},
                                      {"prompt": "Write g.", "tests": 5}])
    with pytest.raises(DataError, match="c.jsonl:3: tests must be a string"):
        code.load(f)


def test_scca_data_math_writes_gsm8k_style_rows_the_reader_takes(tmp_path, capsys):
    out = tmp_path / "gsm.jsonl"
    assert scca(["data", "math", "--n", "50", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 50 and all(set(r) == {"question", "answer"} and "\n#### " in r["answer"] for r in rows)
    loaded = math.load(out)
    assert all(math.extract_answer(r["meta"]["solution"]) == r["meta"]["answer"] for r in loaded)
    held = {r["question"] for r in wordproblems.generate(0, 50, "heldout")}
    assert not held & {r["question"] for r in rows}  # disjoint splits
    assert scca(["data", "code", "--n", "3", "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "the 'code' task reads your own JSONL" in capsys.readouterr().err


def test_the_launcher_converts_reports_and_names_the_users_line(tmp_path):
    f = _write(tmp_path / "gsm.jsonl", [{"question": "A?", "answer": "#### 1"}, {"question": "A?", "answer": "#### 1"},
                                        {"question": "B?", "answer": "#### 2"}])
    cfg = parse_config({"task": {"name": "math", "train_file": str(f), "heldout_file": str(f)},
                        "model": {"bootstrap_dir": str(tmp_path / "none")}})
    prepare_run(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["train"]["rows"] == 2 and report["train"]["duplicates_merged"] == 1
    bad = parse_config({"task": {"name": "math", "train_file": str(f), "heldout_file": str(f), "reward": "no_such.mod:fn"}})
    with pytest.raises(ConfigError, match=r"\[task\] reward = 'no_such.mod:fn': cannot import module 'no_such.mod'"):
        prepare_run(bad, tmp_path / "run2")


def test_preflight_names_the_users_line_of_a_prompt_over_the_limit(tmp_path):
    from learner.local_models import build_model_folder

    model = build_model_folder(tmp_path / "qwen", "qwen2", seed=2)
    f = _write(tmp_path / "gsm.jsonl", [{"question": "A?", "answer": "#### 1"}, {"question": "A?", "answer": "#### 1"},
                                        {"question": "B " * 40 + "?", "answer": "#### 2"}])
    task = {"name": "math", "train_file": str(f), "heldout_file": str(f), "prompt_format": "chat", "max_prompt_tokens": 40}
    cfg = parse_config({"task": task, "model": {"folder": str(model)}})
    with pytest.raises(ConfigError, match=rf"{f}:3: prompt is \d+ tokens in format 'chat', over the maximum 40"):
        prepare_run(cfg, tmp_path / "run")
    cfg = parse_config({"task": {**task, "long_prompts": "drop"}, "model": {"folder": str(model)}})
    prepare_run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "data" / "report.json").read_text())["train"]["dropped_too_long"] == 1


def test_scca_data_from_converts_a_users_file_for_scca_learner(tmp_path):
    from protocol.dataset import DatasetError, read_jsonl

    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "A?", "answer": "x\n#### 1"}, {"question": "A?", "answer": "#### 1"}])
    with pytest.raises(DatasetError, match=r"gsm.jsonl:1: field 'id' must be str, got NoneType \(a task's own JSONL"):
        read_jsonl(gsm)  # what `scca learner` says when given the user's file directly
    out = tmp_path / "prompts.jsonl"
    assert scca(["data", "math", "--from", str(gsm), "--out", str(out)]) == 0
    [row] = read_jsonl(out)
    assert row["prompt"] == "A?" and row["meta"] == {"answer": "1", "solution": "x\n#### 1"}


def test_one_line_reader_numbers_lines_skips_blanks_and_raises_the_callers_error(tmp_path):
    from protocol.dataset import DatasetError, json_objects
    from verifiers.tasks.jsonl import JsonlError, read_jsonl

    path = _write(tmp_path / "rows.jsonl", [{"a": 1}, "", "   ", {"a": 2}])
    assert [(n, where, row) for n, where, row in json_objects(path)] == [
        (1, f"{path}:1", {"a": 1}), (4, f"{path}:4", {"a": 2})]
    bad = _write(tmp_path / "bad.jsonl", [{"a": 1}, "", '"text"'])
    for error in (DatasetError, JsonlError, DataError):  # each reader keeps its own error type
        with pytest.raises(error, match=r"bad.jsonl:3: expected a JSON object, got str"):
            list(json_objects(bad, error))
    with pytest.raises(JsonlError, match=r"bad.jsonl:3: expected a JSON object"):
        read_jsonl(bad)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode() + b"\n")
    assert list(json_objects(bom)) == [(1, f"{bom}:1", {"a": 1})]  # a byte-order mark is not part of line 1


GSM_ROWS = [{"question": "Sam has 9 cards. He buys 5 more. How many?", "answer": "9 + 5 = 14\n#### 14"},
            {"question": "Ava has 2, \"then\" 6 more. How many?", "answer": "#### 8"}]


def _expected(tmp_path):
    from verifiers.tasks.fields import read_rows

    rows, _ = read_rows(_write(tmp_path / "gsm.jsonl", GSM_ROWS), "math")
    return rows


def test_data_files_as_datasets_come_json_array_csv_tsv_parquet(tmp_path):
    """The same GSM8K rows as a JSON array, JSON Lines under a .json name, CSV (a quoted answer
    spanning two lines), TSV and Parquet give the same prompt rows as the JSONL file."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    from verifiers.tasks.fields import read_rows

    expected = _expected(tmp_path)
    array = tmp_path / "gsm.json"
    array.write_text(json.dumps(GSM_ROWS, indent=2))
    lines_json = _write(tmp_path / "lines.json", GSM_ROWS)
    for suffix, delimiter in ((".csv", ","), (".tsv", "\t")):
        with open(tmp_path / f"gsm{suffix}", "w", newline="") as f:
            w = csv.DictWriter(f, ["question", "answer"], delimiter=delimiter)
            w.writeheader()
            w.writerows(GSM_ROWS)
    pq.write_table(pa.Table.from_pylist(GSM_ROWS), tmp_path / "gsm.parquet")
    for path in (array, lines_json, tmp_path / "gsm.csv", tmp_path / "gsm.tsv", tmp_path / "gsm.parquet"):
        rows, report = read_rows(path, "math")
        assert rows == expected, path
        assert report.prompt_field == "question" and report.answer_field == "answer"
    _, report = read_rows(tmp_path / "gsm.csv", "math")
    assert report.places == [f"{tmp_path / 'gsm.csv'}:2", f"{tmp_path / 'gsm.csv'}:4"]  # the first answer spans lines 2-3


BAD_TEXT_FILES = [  # (file name, content, the error it must raise)
    ("bad.json", json.dumps([GSM_ROWS[0], ["not", "an", "object"]]), r"bad.json: item 2: expected a JSON object, got list"),
    ("broken.json", '[\n {"question": "A?",\n  "answer": }\n]', r"broken.json:3: not valid JSON"),
    ("short.csv", "question,answer\nA?,#### 1\nB?\n", r"short.csv:3: expected 2 columns as in the header, got 1"),
    ("headless.csv", "question,\nA?,#### 1\n", r"headless.csv:1: expected a header row naming every column"),
    ("fake.parquet", json.dumps(GSM_ROWS[0]) + "\n", r"fake.parquet: not a readable Parquet file"),
]


def test_bad_rows_in_each_format_name_file_and_place(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verifiers.tasks.fields import read_rows

    for name, content, error in BAD_TEXT_FILES:
        (tmp_path / name).write_text(content)
        with pytest.raises(DataError, match=error):
            read_rows(tmp_path / name, "math")
    pq.write_table(pa.Table.from_pylist([GSM_ROWS[0], {"question": None, "answer": "#### 3"}]), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet: row 2: field 'question' must be a non-empty string or chat messages, got NoneType"):
        read_rows(tmp_path / "n.parquet", "math")


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    import builtins

    from verifiers.tasks.fields import read_rows

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r"x.parquet: reading Parquet needs pyarrow \(`pip install pyarrow`\)"):
        read_rows(tmp_path / "x.parquet", "math")


SYSTEM = "Reason step by step, then give the final answer after ####."


def _verl_row(question: str, answer: str, system: str | None = SYSTEM) -> dict:
    """A row as verl's data preprocessing writes GSM8K to parquet (prompt as chat messages)."""
    turns = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": question}]
    return {"data_source": "openai/gsm8k", "prompt": turns, "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer}, "extra_info": {"split": "train", "index": 0}}


def test_chat_message_prompts_verl_parquet_and_trl_conversational(tmp_path):
    """verl's parquet (system + user turns, reward_model.ground_truth) and TRL's conversational
    JSONL (one user turn, a MATH solution) give plain prompt rows; the system turn is reported."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verifiers.tasks.fields import read_rows

    pq.write_table(pa.Table.from_pylist([_verl_row("Tom has 3 apples...", "72"), _verl_row("Ann has 1,200 pens...", "1200")]),
                   tmp_path / "train.parquet")
    rows, report = read_rows(tmp_path / "train.parquet", "math")
    assert [(r["prompt"], r["meta"]) for r in rows] == [("Tom has 3 apples...", {"answer": "72"}),
                                                        ("Ann has 1,200 pens...", {"answer": "1200"})]
    assert (report.prompt_field, report.answer_field) == ("prompt", "reward_model.ground_truth")
    assert report.chat_messages and report.system_prompt == SYSTEM
    trl = _write(tmp_path / "trl.jsonl", [{"prompt": [{"role": "user", "content": "What is 1+2?"}],
                                           "solution": "1+2 = \\boxed{3}"}])
    [row], report = read_rows(trl, "math")
    assert row["prompt"] == "What is 1+2?" and row["meta"] == {"answer": "3", "solution": "1+2 = \\boxed{3}"}
    assert report.chat_messages and report.system_prompt == ""
    mapped = _write(tmp_path / "mapped.jsonl", [{"q": {"text": "A?"}, "label": {"value": "7"}}])
    [row], _ = read_rows(mapped, "math", prompt_field="q.text", answer_field="label.value")
    assert (row["prompt"], row["meta"]) == ("A?", {"answer": "7"})


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "1"},
                  {"role": "user", "content": "B?"}], "answer": "2"}],
     r"chat.jsonl:1: field 'prompt' has the turns \['user', 'assistant', 'user'\]; a prompt is one user turn, "
     r"optionally after one system turn \(multi-turn prompts are not supported\)"),
    ([{"prompt": [{"role": "user", "text": "A?"}], "answer": "1"}],
     r"chat.jsonl:1: field 'prompt' is a list but not chat messages"),
    ([_verl_row("A?", "1"), _verl_row("B?", "2", system="Be brief.")],
     r"chat.jsonl:2: system turn 'Be brief.' differs from the first row's \('Reason step by step"),
    ([_verl_row("A?", "1"), {"prompt": "B?", "answer": "2"}],
     r"chat.jsonl:2: the file mixes string prompts and chat-message prompts"),
    ([{"prompt": [{"role": "user", "content": "A?"}], "reward_model": {"style": "rule"}}],
     r"chat.jsonl:1: no answer field: expected one of \['answer', 'solution', 'ground_truth', 'reward_model.ground_truth'\]"),
])
def test_bad_chat_message_prompts_name_file_and_line(tmp_path, rows, message):
    f = _write(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DataError, match=message):
        math.load(f)


def test_preflight_holds_chat_data_against_the_runs_format_and_system_prompt(tmp_path, capsys):
    """A verl-style file needs prompt_format 'chat' and its own system turn in the config; with
    both, the run's prompt rows are the user turns (the config's system prompt is the file's)."""
    from learner.local_models import build_model_folder

    model = build_model_folder(tmp_path / "qwen", "qwen2", seed=2)
    f = _write(tmp_path / "verl.jsonl", [_verl_row("A?", "1"), _verl_row("B?", "2")])
    task = {"name": "math", "train_file": str(f), "heldout_file": str(f)}
    for extra, error in (({}, r"verl.jsonl: its prompts are chat messages, but \[task\] prompt_format = 'raw'"),
                         ({"prompt_format": "chat"}, r"verl.jsonl: its prompts carry the system turn 'Reason step "
                                                     r"by step.*', but \[task\] system_prompt = ''")):
        cfg = parse_config({"task": {**task, **extra}, "model": {"folder": str(model)}})
        with pytest.raises(ConfigError, match=error):
            scca_check_inputs(cfg)
    cfg = parse_config({"task": {**task, "prompt_format": "chat", "system_prompt": SYSTEM}, "model": {"folder": str(model)}})
    assert scca_check_inputs(cfg) == {"train": 2, "heldout": 2}
    prepare_run(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "data" / "report.json").read_text())
    assert report["train"]["chat_messages"] and report["train"]["system_prompt"] == SYSTEM
    train = [json.loads(x) for x in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in train] == ["A?", "B?"]
    out = tmp_path / "converted.jsonl"
    assert scca(["data", "math", "--from", str(f), "--out", str(out)]) == 0
    assert f'system_prompt = {json.dumps(SYSTEM)}' in capsys.readouterr().out


def scca_check_inputs(cfg):
    from deploy.preflight import check_inputs

    return check_inputs(cfg)


def test_sharded_data_through_a_glob_pattern(tmp_path):
    """Shards as the Hub ships them (`train-0000i-of-00002.parquet`) read in name order as one
    dataset; an error names its own shard and row; a folder or a pattern matching nothing is
    refused before anything starts, and the launcher names the shard of a too-long prompt."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deploy.preflight import check_inputs
    from learner.local_models import build_model_folder
    from verifiers.tasks.fields import read_rows

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(GSM_ROWS[1:]), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(GSM_ROWS[:1]), data / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "Held out?", "answer": "#### 9"}]), data / "test-00000-of-00001.parquet")
    rows, report = read_rows(data / "train-*.parquet", "math")
    assert rows == _expected(tmp_path)  # the shards in name order = the rows of the one file
    assert report.places == [f"{data / 'train-00000-of-00002.parquet'}: row 1", f"{data / 'train-00001-of-00002.parquet'}: row 1"]
    pq.write_table(pa.Table.from_pylist([{"question": "B?", "answer": "3"}, {"question": None, "answer": "1"}]),
                   data / "train-00001-of-00002.parquet")
    with pytest.raises(DataError, match=r"train-00001-of-00002.parquet: row 2: field 'question' must be"):
        read_rows(data / "train-*.parquet", "math")
    task = {"name": "math", "train_file": str(data), "heldout_file": str(data / "test-*.parquet")}
    for train, error in ((str(data), r"data: is a folder; name its files, e.g. .*train-\*.parquet \(a glob pattern\)"),
                         (str(data / "valid-*.parquet"), r"valid-\*.parquet: no file matches this pattern")):
        with pytest.raises(ConfigError, match=error):
            check_inputs(parse_config({"task": {**task, "train_file": train}}))
    pq.write_table(pa.Table.from_pylist([{"question": "B " * 200 + "?", "answer": "#### 2"}]), data / "train-00001-of-00002.parquet")
    model = build_model_folder(tmp_path / "qwen", "qwen2", seed=2)
    cfg = parse_config({"task": {**task, "train_file": str(data / "train-*.parquet"), "prompt_format": "chat",
                                 "max_prompt_tokens": 100}, "model": {"folder": str(model)}})
    assert check_inputs(cfg) == {"train": 2, "heldout": 1}
    with pytest.raises(ConfigError, match=r"train-00001-of-00002.parquet: row 1: prompt is \d+ tokens"):
        prepare_run(cfg, tmp_path / "run")


def test_converted_prompt_files_are_read_as_they_are_so_math_runs_resume(tmp_path):
    """A math run's resolved config names its converted data/*.jsonl; reading those again
    through the task's reader (what `scca run --resume` and `scca doctor` did) failed with
    "no answer field". A file already in the learner's format is read as it is, also as the
    train_file of a new run (`scca data math --from` output)."""
    from deploy.preflight import check_inputs

    gsm = _write(tmp_path / "gsm.jsonl", GSM_ROWS)
    cfg = parse_config({"task": {"name": "math", "train_file": str(gsm), "heldout_file": str(gsm)},
                        "model": {"bootstrap_dir": str(tmp_path / "none")}})
    resolved = prepare_run(cfg, tmp_path / "run")
    assert resolved.task.train_file == str((tmp_path / "run" / "data" / "train.jsonl").resolve())
    assert check_inputs(resolved) == {"train": 2, "heldout": 2}  # the resume preflight
    converted = tmp_path / "prompts.jsonl"
    assert scca(["data", "math", "--from", str(gsm), "--out", str(converted)]) == 0
    again = parse_config({"task": {"name": "math", "train_file": str(converted), "heldout_file": str(gsm)},
                          "model": {"bootstrap_dir": str(tmp_path / "none")}})
    prepare_run(again, tmp_path / "run2")
    written = [json.loads(x) for x in (tmp_path / "run2" / "data" / "train.jsonl").read_text().splitlines()]
    assert written == [json.loads(x) for x in converted.read_text().splitlines()] == _expected(tmp_path)
