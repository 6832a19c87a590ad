"""Plug-in rewards (verifiers/plugin.py): import errors in one line, results, the fault policy,
and the scorer-worker path (score_many, version stamping) the built-in tasks use."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.config import ConfigError
from verifiers import plugin
from verifiers.scoring import score_many, task_version

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture(autouse=True)
def plugins_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.mark.parametrize("spec, message", [
    ("no_such_pkg.mod:fn", r"\[task\] reward = 'no_such_pkg.mod:fn': cannot import module 'no_such_pkg.mod' "
                           r"\(ModuleNotFoundError: No module named 'no_such_pkg'\)"),
    ("arith_reward:missing", r"module 'arith_reward' has no callable 'missing'"),
    ("arith_reward:NOT_CALLABLE", r"module 'arith_reward' has no callable 'NOT_CALLABLE'"),
    ("arith_reward", r"expected 'package.module:function'"),
])
def test_a_plugin_that_cannot_be_used_is_one_line(spec, message):
    with pytest.raises(plugin.PluginError, match=message) as err:
        plugin.load_reward(spec)
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)


def test_results_details_and_the_fault_policy():
    ok = plugin.PluginTask("arith_reward:exact_final")
    assert ok.score("1+2=", {"answer": 3}, "1+2=3;#3") == {"reason": "plugin", "parsed": "3", "reward": 1.0}
    assert ok.score("1+2=", {"answer": 3}, "1+2=4;#4")["reward"] == 0.0
    assert plugin.PluginTask("arith_reward:length_bonus").score("p", {}, "abcde") == {"reason": "plugin", "reward": 0.5}
    broken = plugin.PluginTask("arith_reward:broken").score("p", {}, "c")
    assert broken == {"reward": 0.0, "reason": "plugin_error: ZeroDivisionError: user bug"}
    assert plugin.PluginTask("arith_reward:out_of_range").score("p", {}, "c")["reason"] == \
        "plugin_error: reward 2.5 outside [0, 1]"
    assert plugin.to_result("1")["reason"] == "plugin_error: returned str, expected a number"


def test_scorer_workers_run_plugins_like_tasks_with_a_version_stamp():
    spec = "arith_reward:exact_final"
    rewards, details, version = score_many(spec, "1+2=", {"answer": 3}, ["#3", "#5", "none"])
    assert rewards == [1.0, 0.0, 0.0] and details[0]["parsed"] == "3"
    sha = plugin.source_sha(plugin.load_reward(spec))
    assert version == task_version(spec) == f"plugin:{spec}:{sha[:12]}" and len(sha) == 64


def test_editing_the_plugin_file_changes_its_version(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_reward_v.py").write_text("def f(prompt, completion, meta):\n    return 1.0\n")
    first = plugin.PluginTask("my_reward_v:f").VERSION
    (tmp_path / "my_reward_v.py").write_text("def f(prompt, completion, meta):\n    return 0.0\n")
    assert plugin.PluginTask("my_reward_v:f").VERSION != first
